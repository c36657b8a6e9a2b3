#!/usr/bin/env bash
# make test-containers: the three images built from the unchanged Dockerfiles and the stack run as
# docker-compose.yml describes it (read-only roots, no capabilities, the compose environment):
#   - the api image holds no model wheel or build leftovers, and starts without converting the model
#   - a streaming chat through nginx (/v1) and through nginx + Express (/api)
#   - each service's processes run as the image's unprivileged uid with no capabilities
#   - the api container killed: the proxy answers 503 + Retry-After at once, and recovers with the api
#   - `up --scale api=2`: requests spread over both replicas (per-replica counts from /metrics)
#   - podman only: `podman kube play` of the Kubernetes manifests (uids, read-only roots, limits)
# Docker when an engine answers, podman otherwise (installed from Debian when root and missing). Base
# images that cannot be pulled are built as Debian stand-ins (scripts/container-bases.sh), and torch
# comes from a local index when download.pytorch.org cannot be reached; both are said in the output.
# Prints "skipped: <why>" and exits 0 where containers cannot run on this machine; any other failure
# exits non-zero. Downloads and stand-in bases are cached in $PIBLOOM_CONTAINER_CACHE
# (default /var/cache/pibloom-ci) so later runs, CI's fresh clones included, reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${PIBLOOM_CONTAINER_CACHE:-/var/cache/pibloom-ci}
PROJECT=pibloom-smoke
PORT=${PIBLOOM_SMOKE_PORT:-18480}
TORCH_VERSION=2.13.0
started=$SECONDS

say() { echo "test-containers: $*" >&2; }
fail() {
    echo "test-containers: FAILED: $*" >&2
    exit 1
}
skip() {
    echo "skipped: $*"
    exit 0
}
step() { say "[$((SECONDS - started))s] $*"; }

# --- engine -------------------------------------------------------------------------------------
engine=""
if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1 \
    && docker compose version >/dev/null 2>&1; then
    engine=docker
    compose=(docker compose -p "$PROJECT")
else
    need=()
    command -v podman >/dev/null 2>&1 || need+=(podman runc netavark aardvark-dns fuse-overlayfs)
    # netavark sets up the published ports and the bridge with iptables, which podman only recommends:
    # without it every container start fails with "netavark: No such file or directory".
    command -v iptables >/dev/null 2>&1 || need+=(iptables)
    command -v catatonit >/dev/null 2>&1 || need+=(catatonit) # podman kube play's pause image
    command -v podman-compose >/dev/null 2>&1 || need+=(podman-compose)
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    if [ ${#need[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            skip "no Docker engine here, and podman (${need[*]}) cannot be installed without root and apt-get"
        fi
        step "installing ${need[*]} from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    if [ "$(id -u)" -ne 0 ]; then
        skip "podman here runs as root only (rootless podman needs subuids and user namespaces set up)"
    fi
    engine=podman
    compose=(podman-compose -p "$PROJECT")
    # What podman needs on a machine without systemd: runc, cgroupfs, nofile and nproc limits that
    # runc may set (podman's defaults are above what this machine allows), netavark + aardvark-dns so
    # services find each other by name. A conf of the caller wins.
    mkdir -p "$CACHE"
    if [ -z "${CONTAINERS_CONF:-}" ]; then
        export CONTAINERS_CONF="$CACHE/containers.conf"
        nofile=$(ulimit -Hn)
        nproc=$(ulimit -Hu)
        [ "$nofile" != unlimited ] && [ "$nofile" -lt 16384 ] || nofile=16384
        [ "$nproc" != unlimited ] && [ "$nproc" -lt 16384 ] || nproc=16384
        cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
EOF
    fi
    if ! out=$(podman info 2>&1); then
        skip "podman cannot run containers here: $(echo "$out" | tail -1)"
    fi
fi
step "engine: $engine ($("$engine" --version | head -1))"

# --- bases and torch ---------------------------------------------------------------------------
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
bash scripts/container-bases.sh "$engine" "$arch" "$CACHE"

build_args=()
server_pid=""
# shellcheck source=scripts/podman-network.sh
. scripts/podman-network.sh
cleanup() {
    set +e
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; fi
    if [ "${keep:-}" != 1 ]; then
        # The second replica under podman is not one podman-compose's `down` knows.
        [ "$engine" != podman ] || podman rm -f "${PROJECT}_api_2" >/dev/null 2>&1
        "${compose[@]}" down -v >/dev/null 2>&1
        if [ "$engine" = podman ]; then
            # podman-compose 1.0.3's `down` leaves the project's network behind.
            drop_network "${PROJECT}_default"
            for f in kubernetes/api-deployment.yaml kubernetes/web-deployment.yaml kubernetes/proxy-deployment.yaml; do
                podman kube down "$f" >/dev/null 2>&1
            done
            drop_network pibloom-kube
            podman volume rm -f pibloom-kube-models >/dev/null 2>&1
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! curl -fsS -m 15 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
    step "download.pytorch.org cannot be reached: torch $TORCH_VERSION and its dependencies from a local index"
    bash scripts/torch-index.sh "$arch" "$TORCH_VERSION" "$CACHE/torch-index/$arch" \
        2> >(grep -v '^WARNING: Location' >&2)
    # A fixed port: the URL is a build argument, so a new one each run would void the layer cache.
    index_port=${PIBLOOM_TORCH_INDEX_PORT:-18479}
    python3 -m http.server --bind 127.0.0.1 --directory "$CACHE/torch-index/$arch" "$index_port" \
        >/dev/null 2>&1 &
    server_pid=$!
    t0=$SECONDS
    until curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$index_port/simple/torch/" 2>/dev/null; do
        [ $((SECONDS - t0)) -lt 20 ] || fail "the local torch index did not start on port $index_port"
        sleep 0.2
    done
    build_args+=(--build-arg "TORCH_INDEX_URL=http://127.0.0.1:$index_port/simple/")
fi

# --- images -------------------------------------------------------------------------------------
build_opts=(--network host)
if [ "$engine" = podman ]; then
    # docker format keeps HEALTHCHECK; the host's CA bundle and download caches are mounted for the
    # build steps only (they never reach an image).
    mkdir -p "$CACHE/pypoetry" "$CACHE/npm"
    build_opts+=(--format docker -v /etc/ssl/certs:/etc/ssl/certs:ro
        -v "$CACHE/pypoetry:/root/.cache/pypoetry" -v "$CACHE/npm:/root/.npm")
fi
for name in api web proxy; do
    step "building pibloom/$name:0.2.0 from $name/Dockerfile"
    t0=$SECONDS
    "$engine" build "${build_opts[@]}" "${build_args[@]}" -t "pibloom/$name:0.2.0" "$name" \
        >"$CACHE/build-$name.log" 2>&1 || {
        tail -40 "$CACHE/build-$name.log" >&2
        fail "building the $name image (log: $CACHE/build-$name.log)"
    }
    size=$("$engine" image inspect --format '{{.Size}}' "pibloom/$name:0.2.0")
    step "pibloom/$name:0.2.0 built in $((SECONDS - t0))s, $((size / 1000000)) MB"
done

in_api_image() { "$engine" run --rm --network none --entrypoint "$1" pibloom/api:0.2.0 "${@:2}"; }
leftovers=$(in_api_image find /models \( -name '*.whl' -o -name '*.part' -o -name '.fetch-*' \) -print)
[ -z "$leftovers" ] || fail "build leftovers in the api image's /models: $leftovers"
say "api image: $(in_api_image du -sh /opt/venv /models | tr '\t\n' ': ')"

# --- the stack, as compose describes it --------------------------------------------------------
export PIBLOOM_PROXY_PUBLISH=$PORT
base=http://127.0.0.1:$PORT
"${compose[@]}" down -v >/dev/null 2>&1 || true
if [ "$engine" = podman ] && command -v iptables-save >/dev/null 2>&1; then
    # A stack killed with its machine (not stopped) leaves netavark's DNAT rules for the port behind,
    # and they win over the new ones: the published port then answers "no route to host".
    drop_network "${PROJECT}_default"
    # grep finds nothing on a clean machine: that is not a failure under pipefail.
    stale=$(iptables-save -t nat | grep -E "^-A NETAVARK.* --dport $PORT( |$)" || true)
    while read -r _ rule; do
        if [ -n "$rule" ]; then eval "iptables -t nat -D $rule" || true; fi
    done <<<"$stale"
fi
step "compose up (proxy on $base)"
"${compose[@]}" up -d --no-build >"$CACHE/compose-up.log" 2>&1 || {
    tail -30 "$CACHE/compose-up.log" >&2
    fail "compose up"
}

container() { # the container of service $1, replica $2 (default 1)
    "$engine" ps -a --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | sort | sed -n "${2:-1}p"
}

# wait_for URL STATUS SECONDS: poll until URL answers STATUS (curl's own timeout bounds each try).
wait_for() {
    local url=$1 want=$2 limit=$3 t0=$SECONDS code
    while [ $((SECONDS - t0)) -lt "$limit" ]; do
        code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$url" || true)
        [ "$code" = "$want" ] && return 0
        sleep 1
    done
    return 1
}

step "waiting for readiness through the proxy"
if ! wait_for "$base/health/ready" 200 300; then
    for s in api web proxy; do
        c=$(container "$s")
        [ -n "$c" ] && "$engine" logs --tail 20 "$c" >&2
    done
    fail "the stack did not become ready through the proxy in 300 s"
fi
step "ready"
api=$(container api)
if "$engine" logs "$api" 2>&1 | grep -q "converting "; then
    fail "the api converted the model again although the image carries the conversion"
fi

# streaming chat, through nginx to the api and through nginx + Express to the api
model=$(curl -fsS -m 10 "$base/v1/models" | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])') \
    || fail "no model listed at $base/v1/models"
say "serving $model"
chat='{"model":"'$model'","messages":[{"role":"user","content":"Say hello."}],"max_tokens":8,"stream":true}'
for path in /v1/chat/completions /api/v1/chat/completions; do
    body=$(curl -sS -m 120 -N -H 'content-type: application/json' -d "$chat" "$base$path") \
        || fail "streaming chat via $path"
    grep -q '^data: \[DONE\]' <<<"$body" || fail "no [DONE] in the stream via $path: ${body:0:300}"
    grep -q '"delta":{[^}]*"content":"[^"]' <<<"$body" || fail "no content in the stream via $path: ${body:0:300}"
    say "streamed chat via $path: $(grep -c '^data: {' <<<"$body") chunks"
done

# every process of every service: the image's uid, no capabilities, and a read-only root
check_processes() { # container uid
    local c=$1 uid=$2 report
    report=$("$engine" exec "$c" sh -c 'for s in /proc/[0-9]*/status; do
        awk "/^Name:/ {n=\$2} /^Uid:/ {u=\$2} /^CapEff:/ {c=\$2} END {print n, u, c}" "$s"; done 2>/dev/null')
    while read -r name puid caps; do
        [ "$name" = sh ] || [ "$name" = awk ] && continue
        [ "$puid" = "$uid" ] || fail "$c: process $name runs as uid $puid, not $uid"
        [ "$caps" = 0000000000000000 ] || fail "$c: process $name has capabilities $caps"
    done <<<"$report"
    if "$engine" exec "$c" sh -c 'touch /probe-read-only' 2>/dev/null; then
        fail "$c: the root filesystem is writable"
    fi
    say "$c: $(wc -l <<<"$report") processes as uid $uid, no capabilities, read-only root"
}
check_processes "$api" 10001
check_processes "$(container web)" 1000
check_processes "$(container proxy)" 101

# the api killed: the proxy answers 503 + Retry-After at once, then recovers
step "killing $api"
state() { "$engine" inspect --format '{{.State.Running}} {{.State.StartedAt}}' "$api"; }
before=$(state)
"$engine" kill "$api" >/dev/null
# Gone, or already restarted by the restart policy (a new start time): either way the old process died.
t0=$SECONDS
while [ "$(state)" = "$before" ]; do
    [ $((SECONDS - t0)) -lt 20 ] || fail "$api still runs 20 s after it was killed"
    sleep 0.2
done
headers=$(curl -s -m 15 -D - -o /dev/null -H 'content-type: application/json' \
    -d '{"model":"'$model'","messages":[{"role":"user","content":"hi"}],"max_tokens":4}' "$base/v1/chat/completions") \
    || fail "the proxy did not answer within 15 s while the api was down (a hang)"
grep -q '^HTTP/[0-9.]* 503' <<<"$headers" || fail "the proxy answered $(head -1 <<<"$headers") with the api down"
grep -qi '^retry-after: [0-9]' <<<"$headers" || fail "no Retry-After on the proxy's 503"
say "api down: the proxy answered $(head -1 <<<"$headers" | tr -d '\r') with $(grep -i '^retry-after' <<<"$headers" | tr -d '\r')"
# The restart policy brings the api back; an engine that leaves a killed container down gets it started.
t0=$SECONDS
until [ "$("$engine" inspect --format '{{.State.Running}}' "$api")" = true ] || [ $((SECONDS - t0)) -ge 10 ]; do
    sleep 1
done
if [ "$("$engine" inspect --format '{{.State.Running}}' "$api")" != true ]; then
    say "the engine did not restart $api (restart: unless-stopped): starting it"
    "$engine" start "$api" >/dev/null
fi
wait_for "$base/health/ready" 200 300 || fail "the proxy did not recover after the api came back"
body=$(curl -sS -m 120 -H 'content-type: application/json' \
    -d '{"model":"'$model'","messages":[{"role":"user","content":"hi"}],"max_tokens":4}' "$base/v1/chat/completions")
grep -q '"choices"' <<<"$body" || fail "no chat after the api came back: ${body:0:300}"
step "recovered: the api answers through the proxy again"

# two replicas: requests spread over both (per-replica counts from each replica's /metrics)
step "scaling the api to 2 replicas"
if [ "$engine" = docker ]; then
    scale=(up -d --no-build --scale api=2)
else
    # podman-compose 1.0.3 parses --scale but ignores it, and with deploy.replicas above 1 it breaks
    # the list-form healthcheck of every replica after the first; `run -d` adds a second api
    # container from the same service definition (network alias `api`, environment, limits,
    # read-only root, no capabilities).
    scale=(run -d --no-deps --name "${PROJECT}_api_2" api)
fi
"${compose[@]}" "${scale[@]}" >>"$CACHE/compose-up.log" 2>&1 || {
    tail -30 "$CACHE/compose-up.log" >&2
    fail "compose ${scale[*]} (2 api replicas)"
}
wait_for "$base/health/ready" 200 300 || fail "the stack with 2 api replicas did not become ready"
api=$(container api 1)
api2=$(container api 2)
[ -n "$api2" ] || fail "no second api container after --scale api=2"
replica_count() { # chat completions answered 200 by replica $1 (its metrics port, PIBLOOM_METRICS_PORT)
    "$engine" exec "$1" python -c 'import urllib.request as r
text = r.urlopen("http://127.0.0.1:8001/metrics", timeout=5).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
    if l.startswith("pibloom_request_duration_seconds_count{") and "/v1/chat/completions" in l and "\"200\"" in l)))'
}
t0=$SECONDS
until "$engine" exec "$api2" python -c 'import urllib.request as r; r.urlopen("http://127.0.0.1:8000/health/ready", timeout=4)' 2>/dev/null; do
    [ $((SECONDS - t0)) -lt 300 ] || fail "the second replica did not become ready in 300 s"
    sleep 2
done
before1=$(replica_count "$api")
before2=$(replica_count "$api2")
sent=0
while :; do
    curl -sS -m 120 -o /dev/null -H 'content-type: application/json' \
        -d '{"model":"'$model'","messages":[{"role":"user","content":"hi"}],"max_tokens":2}' "$base/v1/chat/completions"
    sent=$((sent + 1))
    n1=$(($(replica_count "$api") - before1))
    n2=$(($(replica_count "$api2") - before2))
    if [ "$n1" -ge 2 ] && [ "$n2" -ge 2 ]; then break; fi
    # nginx looks the name up again every 10 s (resolver valid=10s): 40 requests a second apart cover it.
    [ "$sent" -lt 40 ] || fail "after $sent requests: $api answered $n1, $api2 answered $n2"
    sleep 1
done
step "--scale api=2: $sent requests through the proxy, $api answered $n1, $api2 answered $n2"

[ "$engine" != podman ] || podman rm -f "${PROJECT}_api_2" >/dev/null 2>&1
"${compose[@]}" down -v >/dev/null 2>&1

# --- Kubernetes manifests under podman kube play ----------------------------------------------
if [ "$engine" = podman ]; then
    bash scripts/kube-play.sh
fi

step "passed in $((SECONDS - started))s"
echo "1 passed, 0 failed"
