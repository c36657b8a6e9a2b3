# Sourced by test-containers.sh and kube-play.sh (podman only).
# A network, and the DNS file aardvark-dns keeps for it: a stack killed midway leaves the file with
# its containers' names and addresses, and a later network on the same gateway answered them (dead
# addresses) for its own names here.
drop_network() {
    podman network rm -f "$1" >/dev/null 2>&1 || true
    podman network exists "$1" || rm -f "/run/containers/networks/aardvark-dns/$1"
}
