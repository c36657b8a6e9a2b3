#!/usr/bin/env bash
# One-off check, not part of CI (an emulated build takes tens of minutes): the api and web images
# built for linux/arm64 from the unchanged Dockerfiles under qemu-user-static, the api run from its
# arm64 image as compose runs it (read-only root, no capabilities) and asked for a chat, the web
# image's server answering. Prints the build, start and answer times. podman, as root.
#
#   scripts/arm64-check.sh          (after `make test-containers` has set podman up on this machine)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${PIBLOOM_CONTAINER_CACHE:-/var/cache/pibloom-ci}
PORT=${PIBLOOM_ARM64_PORT:-18490}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$CACHE/containers.conf}
started=$SECONDS
say() { echo "arm64-check: [$((SECONDS - started))s] $*" >&2; }
fail() {
    echo "arm64-check: FAILED: $*" >&2
    exit 1
}
[ "$(id -u)" -eq 0 ] || fail "needs root (podman, binfmt_misc)"
[ -f "$CONTAINERS_CONF" ] || fail "run make test-containers first (it writes $CONTAINERS_CONF)"
if [ ! -x /usr/bin/qemu-aarch64-static ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static binfmt-support >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64

bash scripts/container-bases.sh podman arm64 "$CACHE"

build_args=()
if ! curl -fsS -m 15 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
    # PyPI's aarch64 torch wheels from 2.11 on are CUDA builds that pull gigabytes of nvidia packages;
    # 2.10.0 is the newest CPU-only one there. (PyTorch's CPU index has 2.13.0 for aarch64.)
    build_args+=(--build-arg TORCH_VERSION=2.10.0 --build-arg TORCH_INDEX_URL=https://pypi.org/simple)
    say "download.pytorch.org cannot be reached: torch 2.10.0 (CPU) from PyPI for aarch64"
fi
mkdir -p "$CACHE/pypoetry-arm64" "$CACHE/npm"
opts=(--platform linux/arm64 --format docker --network host -v /etc/ssl/certs:/etc/ssl/certs:ro)

t0=$SECONDS
podman build "${opts[@]}" -v "$CACHE/pypoetry-arm64:/root/.cache/pypoetry" "${build_args[@]}" \
    --build-arg PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm-arm64 \
    -t pibloom/api:0.2.0-arm64 api >"$CACHE/build-api-arm64.log" 2>&1 \
    || { tail -30 "$CACHE/build-api-arm64.log" >&2; fail "arm64 api build (log: $CACHE/build-api-arm64.log)"; }
api_build=$((SECONDS - t0))
say "api image built for arm64 in ${api_build}s ($(($(podman image inspect --format '{{.Size}}' pibloom/api:0.2.0-arm64) / 1000000)) MB)"

t0=$SECONDS
podman build "${opts[@]}" -v "$CACHE/npm:/root/.npm" \
    --build-arg NODE_IMAGE=docker.io/library/node:20-alpine-arm64 \
    -t pibloom/web:0.2.0-arm64 web >"$CACHE/build-web-arm64.log" 2>&1 \
    || { tail -30 "$CACHE/build-web-arm64.log" >&2; fail "arm64 web build (log: $CACHE/build-web-arm64.log)"; }
web_build=$((SECONDS - t0))
say "web image built for arm64 in ${web_build}s"

cleanup() { podman rm -f pibloom-arm64-api pibloom-arm64-web >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
t0=$SECONDS
podman run -d --name pibloom-arm64-api --read-only --tmpfs /tmp --cap-drop ALL \
    --security-opt no-new-privileges -p "127.0.0.1:$PORT:8000" pibloom/api:0.2.0-arm64 >/dev/null
machine=$(podman exec pibloom-arm64-api python -c 'import platform; print(platform.machine())')
[ "$machine" = aarch64 ] || fail "the api container runs on $machine, not aarch64"
until curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$PORT/health/ready" 2>/dev/null; do
    [ $((SECONDS - t0)) -lt 1200 ] || fail "the arm64 api was not ready in 1200 s: $(podman logs --tail 5 pibloom-arm64-api 2>&1)"
    sleep 5
done
ready=$((SECONDS - t0))
podman logs pibloom-arm64-api 2>&1 | grep -q "converting " && fail "the arm64 api converted the model again"
say "arm64 api ready in ${ready}s ($machine, emulated)"
# A Pi serves float32, with 4-bit copies for small steps and the output layer ranked in 8 bits (torch's
# NEON kernels); the api must pick that path on arm64 even though emulation shows it the host's flags.
served=$(podman logs pibloom-arm64-api 2>&1 | grep -o "ready on cpu (.*)" | head -1)
case "$served" in
    *float32*"int4 weights for steps of up to"*"output layer ranked in int8"*) ;;
    *) fail "the arm64 api does not serve the float32 4-bit path: ${served:-no ready line}" ;;
esac
say "arm64 api serves: $served"
t0=$SECONDS
answer=$(curl -fsS -m 900 -H 'content-type: application/json' \
    -d '{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":8,"temperature":0}' \
    "http://127.0.0.1:$PORT/v1/chat/completions") || fail "no chat answer from the arm64 api"
say "arm64 chat answered in $((SECONDS - t0))s: $(python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])' <<<"$answer")"

podman run -d --name pibloom-arm64-web --read-only --tmpfs /tmp --cap-drop ALL pibloom/web:0.2.0-arm64 >/dev/null
t0=$SECONDS
until podman exec pibloom-arm64-web node -e "fetch('http://127.0.0.1:3000/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))" 2>/dev/null; do
    [ $((SECONDS - t0)) -lt 120 ] || fail "the arm64 web server did not answer /healthz in 120 s"
    sleep 2
done
say "arm64 web server answers /healthz ($(podman exec pibloom-arm64-web node -p process.arch))"
say "summary: api build ${api_build}s, web build ${web_build}s, api ready ${ready}s"
