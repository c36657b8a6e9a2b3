#!/usr/bin/env bash
# Turn docker-compose.yml into Kubernetes manifests with kompose, optionally building and pushing
# multi-arch images (linux/amd64 + linux/arm64) first.
#
#   kubernetes/convert-compose.sh                                   # kompose only, into kubernetes/kompose/
#   kubernetes/convert-compose.sh --registry localhost:32000/pibloom --push
#   kubernetes/convert-compose.sh --registry ghcr.io/you/pibloom --tag 0.2.1 --push --out /tmp/k8s
#
# kompose follows the `kompose.*` labels in docker-compose.yml (service types, probes, ingress host and
# class, pull policy, volume size). Its raw output goes to a scratch folder and is compared with the
# reviewed manifests in kubernetes/, which add what kompose cannot express (startup probes, security
# contexts, the model-cache init step, the autoscaler, the kustomization). Review the differences and
# carry over what you want; `kubectl apply -k kubernetes/` deploys the reviewed set.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
COMPOSE_FILE="$ROOT/docker-compose.yml"
PLATFORMS="linux/amd64,linux/arm64"

registry=""
tag=""
push=0
out="$HERE/kompose"

usage() {
    # The header comment above is the manual.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    cat <<'EOF'

Options:
  --registry PREFIX  image name prefix, e.g. localhost:32000/pibloom (microk8s registry addon)
                     or ghcr.io/<you>/pibloom; images become PREFIX/{api,web,proxy}:TAG
  --tag TAG          image tag (default: PIBLOOM_TAG or 0.2.0)
  --push             build for linux/amd64 + linux/arm64 with docker buildx and push (needs --registry)
  --out DIR          where kompose writes (default: kubernetes/kompose, not committed)
  -h, --help         this text
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --registry) registry="${2:?--registry needs a value}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --push) push=1; shift ;;
        --out) out="${2:?--out needs a value}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "convert-compose: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# --- prerequisites ---------------------------------------------------------------------------
missing=0
need() {  # need COMMAND "how to get it"
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "convert-compose: '$1' is missing. $2" >&2
        missing=1
    fi
}
need kompose "Install it from https://kompose.io/installation/ (a single binary; v1.34 or newer)."
if [ "$push" -eq 1 ]; then
    if [ -z "$registry" ]; then
        echo "convert-compose: --push needs --registry (where the images go)." >&2
        exit 2
    fi
    need docker "Install Docker Engine (https://docs.docker.com/engine/install/) to build images."
    if command -v docker >/dev/null 2>&1 && ! docker buildx version >/dev/null 2>&1; then
        echo "convert-compose: 'docker buildx' is missing: install the docker-buildx plugin." >&2
        missing=1
    fi
fi
[ "$missing" -eq 0 ] || exit 1

export PIBLOOM_TAG="${tag:-${PIBLOOM_TAG:-0.2.0}}"
if [ -n "$registry" ]; then export PIBLOOM_IMAGE_PREFIX="${registry%/}"; fi

# --- multi-arch images -------------------------------------------------------------------------
if [ "$push" -eq 1 ]; then
    # Cross-building needs a BuildKit builder that can emulate the other architecture (QEMU).
    if ! docker buildx inspect --bootstrap 2>/dev/null | grep -q "linux/arm64" \
        || ! docker buildx inspect 2>/dev/null | grep -q "linux/amd64"; then
        echo "convert-compose: the current buildx builder cannot build both $PLATFORMS." >&2
        echo "  Create one:  docker run --privileged --rm tonistiigi/binfmt --install arm64,amd64" >&2
        echo "               docker buildx create --name pibloom --driver docker-container --use" >&2
        exit 1
    fi
    echo "convert-compose: building and pushing $PIBLOOM_IMAGE_PREFIX/{api,web,proxy}:$PIBLOOM_TAG ($PLATFORMS)"
    # bake reads the build sections (contexts, platforms, image names) straight from the compose file.
    docker buildx bake --file "$COMPOSE_FILE" --set "*.platform=$PLATFORMS" --push api web proxy
fi

# --- kompose -----------------------------------------------------------------------------------
mkdir -p "$out"
echo "convert-compose: kompose convert -> $out"
kompose convert --file "$COMPOSE_FILE" --out "$out" --with-kompose-annotation=false

echo
echo "Differences between kompose's output ($out) and the reviewed manifests ($HERE):"
diff -ru --exclude=kompose --exclude=convert-compose.sh --exclude=kustomization.yaml --exclude='.*' \
    "$out" "$HERE" || true
echo
if [ -n "$registry" ]; then
    echo "Point the kustomization at your images (one place for all three):"
    for name in api web proxy; do
        echo "  (cd kubernetes && kustomize edit set image pibloom/$name=$PIBLOOM_IMAGE_PREFIX/$name:$PIBLOOM_TAG)"
    done
    echo "or edit newName/newTag under 'images:' in kubernetes/kustomization.yaml."
fi
echo "Deploy the reviewed set with:  kubectl apply -k kubernetes/"
