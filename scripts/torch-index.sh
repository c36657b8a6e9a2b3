#!/usr/bin/env bash
# scripts/torch-index.sh ARCH VERSION DIR
# A PEP 503 "simple" index in DIR/simple/ holding torch==VERSION for linux/ARCH and CPython 3.11 with
# its dependencies, taken from this machine's pip sources, for image builds that cannot reach
# download.pytorch.org (the api Dockerfile's TORCH_INDEX_URL). Served with `python3 -m http.server`;
# kept in DIR between runs.
set -euo pipefail
arch=$1
version=$2
dir=$3
done_mark="$dir/.complete-$version"
[ -f "$done_mark" ] && exit 0
case $arch in
    amd64) platform=manylinux_2_28_x86_64 ;;
    arm64) platform=manylinux_2_28_aarch64 ;;
    *)
        echo "torch-index: no torch wheels for $arch" >&2
        exit 1
        ;;
esac
mkdir -p "$dir/wheels"
python3 -m pip download --quiet --only-binary=:all: --platform "$platform" --python-version 3.11 \
    --implementation cp -d "$dir/wheels" "torch==$version"
python3 - "$dir" <<'PY'
import os
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
for wheel in (root / "wheels").glob("*.whl"):
    project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    folder = root / "simple" / project
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / wheel.name).exists():
        os.link(wheel, folder / wheel.name)
PY
touch "$done_mark"
