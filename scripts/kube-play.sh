#!/usr/bin/env bash
# The Kubernetes manifests' pods under `podman kube play`, the closest thing to a cluster without one:
# the api, web and proxy Deployments (one pod each) on one podman network, each pod with its Service's
# name as network alias, so `api` and `web` resolve as the Services make them resolve in a cluster
# (podman kube play itself has no Services). Checks that every container runs as the securityContext
# says (uid, no capabilities, read-only root) within the limits written, that the api pod's init
# container seeded its per-pod model cache (emptyDir) and the api loaded it without converting, and
# that a chat goes through the proxy pod. Run by scripts/test-containers.sh after the images are built.
set -euo pipefail
cd "$(dirname "$0")/.."
net=pibloom-kube
py=.venv/bin/python
[ -x "$py" ] || py=python3
started=$SECONDS
say() { echo "kube-play: [$((SECONDS - started))s] $*" >&2; }
fail() {
    echo "kube-play: FAILED: $*" >&2
    exit 1
}

for svc in api web proxy; do
    podman kube down "kubernetes/$svc-deployment.yaml" >/dev/null 2>&1 || true
done
# shellcheck source=scripts/podman-network.sh
. scripts/podman-network.sh
drop_network "$net"
# Another stack's stale DNS file (see drop_network) on a shared subnet answered `api` with a dead
# address here: its own subnet keeps this network's names its own.
podman network create --subnet 10.89.250.0/24 "$net" >/dev/null
for svc in api web proxy; do
    if ! out=$(podman kube play --network "$net:alias=$svc" "kubernetes/$svc-deployment.yaml" 2>&1); then
        # podman 4.3 removes a finished "once" init container right after it exits, and sometimes does
        # so while its own state still says running ("failed to remove once init container ...: it is
        # running"); the pod is then left with its app containers created but not started (three
        # plays in a row failed so on CI). Finish what podman left: wait for the init container's
        # exit, which must be 0, remove it, start the pod.
        init=$(grep -o 'failed to remove once init container [0-9a-f]*' <<<"$out" | awk '{print $NF}') || true
        pod=$(grep -o 'bringing up pod [^:]*' <<<"$out" | awk '{print $NF}') || true
        [ -n "$init" ] && [ -n "$pod" ] \
            || fail "podman kube play kubernetes/$svc-deployment.yaml: $(tail -2 <<<"$out")"
        code=$(podman wait "$init") || fail "cannot wait for the init container of $pod: $code"
        [ "$code" = 0 ] || fail "the init container of $pod exited with $code: $(podman logs --tail 5 "$init" 2>&1)"
        # `podman wait` reads the exit code before podman's own state catches up: for a while after it
        # returns the container can still be "running" to podman, and a plain rm then fails (it did on
        # CI). Wait for the state to follow; the process has exited with 0, so removing it with force
        # loses nothing if the state never does.
        t0=$SECONDS
        while [ "$(podman inspect "$init" --format '{{.State.Status}}' 2>/dev/null)" = running ] \
            && [ $((SECONDS - t0)) -lt 30 ]; do
            sleep 1
        done
        podman rm --force --ignore "$init" >/dev/null && podman pod start "$pod" >/dev/null \
            || fail "could not start $pod after its init container"
        say "podman's init-container race: removed the exited init container of $pod and started the pod"
    fi
    say "played kubernetes/$svc-deployment.yaml (network $net, alias $svc)"
done

# What each Deployment's first container asks for: uid, read-only root, cpu and memory limits.
expected() {
    "$py" - "kubernetes/$1-deployment.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
pod = doc["spec"]["template"]["spec"]
c = pod["containers"][0]
uid = c.get("securityContext", {}).get("runAsUser", pod.get("securityContext", {}).get("runAsUser"))
limits = c["resources"]["limits"]
cpu = limits["cpu"]
millis = int(cpu[:-1]) if cpu.endswith("m") else int(float(cpu) * 1000)
units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
mem = limits["memory"]
memory = int(mem[:-2]) * units[mem[-2:]] if mem[-2:] in units else int(mem)
print(doc["metadata"]["name"], c["name"], uid, str(c["securityContext"]["readOnlyRootFilesystem"]).lower(), millis, memory)
PY
}

for svc in api web proxy; do
    read -r name cname uid ro millis memory <<<"$(expected "$svc")"
    c="$name-pod-0-$cname"
    podman container exists "$c" || fail "no container $c"
    got=$(podman inspect "$c" --format '{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CpuQuota}} {{.HostConfig.CpuPeriod}} {{.HostConfig.Memory}}')
    read -r gro quota period gmem <<<"$got"
    [ "$gro" = "$ro" ] || fail "$c: read-only root is $gro, the manifest says $ro"
    [ "$gmem" = "$memory" ] || fail "$c: memory limit $gmem, the manifest says $memory"
    [ $((quota * 1000 / period)) = "$millis" ] || fail "$c: cpu limit $quota/$period, the manifest says ${millis}m"
    t0=$SECONDS
    until [ "$(podman inspect "$c" --format '{{.State.Running}}')" = true ]; do
        [ $((SECONDS - t0)) -lt 60 ] || fail "$c is not running: $(podman logs --tail 5 "$c" 2>&1)"
        sleep 1
    done
    report=$(podman exec "$c" sh -c 'for s in /proc/[0-9]*/status; do
        awk "/^Name:/ {n=\$2} /^Uid:/ {u=\$2} /^CapEff:/ {c=\$2} END {print n, u, c}" "$s"; done 2>/dev/null')
    while read -r pname puid caps; do
        [ "$puid" = "$uid" ] || fail "$c: process $pname runs as uid $puid, the manifest says $uid"
        [ "$caps" = 0000000000000000 ] || fail "$c: process $pname has capabilities $caps"
    done <<<"$report"
    say "$c: uid $uid, no capabilities, read-only root $gro, limits ${millis}m cpu / $((memory / 2**20)) MiB as written"
done

api=api-pod-0-api
proxy=proxy-pod-0-proxy
# The per-pod cache: the init container copied the image's model into the emptyDir...
podman exec "$api" sh -c 'ls /models/converted/*/model.safetensors' >/dev/null \
    || fail "the api pod's model cache (emptyDir) was not seeded by the init container"
t0=$SECONDS
until podman exec "$proxy" wget -q -O /dev/null http://api:8000/health/ready 2>/dev/null; do
    [ $((SECONDS - t0)) -lt 300 ] || fail "the api pod did not become ready at http://api:8000 in 300 s"
    sleep 2
done
# ...and the api loaded it as it was (no second conversion).
if podman logs "$api" 2>&1 | grep -q "converting "; then
    fail "the api pod converted the model again instead of using the seeded cache"
fi
podman exec "$proxy" wget -q -O /dev/null http://web:3000/healthz || fail "web does not resolve or answer from the proxy pod"
say "Service names resolve: api and web answer from the proxy pod"

answer=$(podman run --rm --network "$net" --entrypoint python pibloom/api:0.2.0 -c '
import json, urllib.request as r
model = json.load(r.urlopen("http://proxy:8080/v1/models", timeout=30))["data"][0]["id"]
body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
req = r.Request("http://proxy:8080/v1/chat/completions", body, {"content-type": "application/json"})
print(json.load(r.urlopen(req, timeout=120))["choices"][0]["message"]["content"])') \
    || fail "no chat through the proxy pod"
say "chat through the proxy pod: ${answer:0:60}"

for svc in proxy web api; do
    podman kube down "kubernetes/$svc-deployment.yaml" >/dev/null 2>&1 || true
done
drop_network "$net"
say "passed"
