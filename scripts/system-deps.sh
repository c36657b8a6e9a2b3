#!/usr/bin/env bash
# Debian packages the local stack and the browser tests use: nginx (the proxy), redis-server (the
# rate limit shared by api replicas), chromium (headless browser for the end-to-end tests) and
# prometheus (its promtool checks the monitoring profile's scrape configuration), g++ (the api's
# compiled decode step). Installs what is missing when it can (root + apt-get); otherwise
# says how to get it. Quick and silent when everything is already there.
set -euo pipefail

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# envsubst: the deploy tests check the proxy template the way the official nginx image fills it.
command -v envsubst >/dev/null 2>&1 || missing+=(gettext-base)
# g++: torch's compiler builds the api's compiled decode step with it (x86 with AVX-512; without it the
# api runs the eager pass, slower).
command -v g++ >/dev/null 2>&1 || missing+=(g++)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: missing ${missing[*]}." >&2
    if command -v apt-get >/dev/null 2>&1; then
        echo "  install them with: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    else
        echo "  install nginx with your package manager (e.g. 'brew install nginx');" >&2
        echo "  the browser tests expect Chromium at /usr/bin/chromium (Debian/Ubuntu: apt-get install chromium)." >&2
    fi
    echo "  'make run' still works without nginx (everything through Express) and without redis-server" >&2
    echo "  (rate limits then count per api process)." >&2
    exit 0
fi

# Outside systemd (containers, CI) the packages' init scripts would start a stray nginx on port 80 (and
# redis on 6379, prometheus on 9090) that nothing manages; a policy-rc.d that refuses service starts prevents that. Ours is removed afterwards.
added_policy=""
if [ ! -d /run/systemd/system ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    added_policy=1
fi
cleanup() { if [ -n "$added_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

echo "system-deps: installing ${missing[*]} from Debian" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system-deps: done" >&2
