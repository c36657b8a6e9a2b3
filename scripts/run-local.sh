#!/usr/bin/env bash
# The whole stack as local processes on loopback, under honcho (prefixed logs, one Ctrl-C stops all):
#   api    gunicorn + uvicorn (`pibloom serve`)             127.0.0.1:$PIBLOOM_PORT       (8000)
#   web    Express: the UI bundle + /api proxy to the api   127.0.0.1:$PIBLOOM_WEB_PORT   (3000)
#   proxy  Debian's nginx with proxy/nginx.conf.template    127.0.0.1:$PIBLOOM_PROXY_PORT (8080)
#   redis  Debian's redis-server: shared rate-limit counts  127.0.0.1:$PIBLOOM_REDIS_PORT (6390)
# Without nginx it still runs api + web and serves everything through Express; without redis-server,
# rate limits count per api process.
# Usually started by `make run`, which first sets up the venv, builds the UI and fetches the model.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export PIBLOOM_PORT="${PIBLOOM_PORT:-8000}"
export PIBLOOM_WEB_PORT="${PIBLOOM_WEB_PORT:-3000}"
export PIBLOOM_PROXY_PORT="${PIBLOOM_PROXY_PORT:-8080}"
export PIBLOOM_HOST="${PIBLOOM_HOST:-127.0.0.1}"
export PIBLOOM_CACHE_DIR="${PIBLOOM_CACHE_DIR:-$ROOT/.cache/pibloom}"
# One JSON line per request from nginx, Express and the api, with the same field names.
export PIBLOOM_LOG_JSON="${PIBLOOM_LOG_JSON:-true}"
# redis-server holds the rate-limit counts every api process shares (used when PIBLOOM_RATE_LIMIT is set).
export PIBLOOM_REDIS_PORT="${PIBLOOM_REDIS_PORT:-6390}"
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
RUN_DIR="${PIBLOOM_RUN_DIR:-$ROOT/.run}"

die() { echo "run-local: $*" >&2; exit 1; }

[ -x "$VENV_BIN/pibloom" ] || die "no $VENV_BIN/pibloom: run 'make setup' first (or 'make run')."
[ -x "$VENV_BIN/honcho" ] || die "no $VENV_BIN/honcho: run 'make setup' first (or 'make run')."
command -v node >/dev/null 2>&1 || die "node is not installed (Node.js 20 or newer is needed for the web server)."
[ -f web/dist/index.html ] || die "the UI is not built: run 'make setup-web' first (or 'make run')."

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
REDIS="${PIBLOOM_REDIS:-$(command -v redis-server 2>/dev/null || true)}"
if [ "$REDIS" = none ]; then REDIS=""; fi
ports="PIBLOOM_PORT PIBLOOM_WEB_PORT PIBLOOM_PROXY_PORT"
if [ -n "$REDIS" ]; then ports="$ports PIBLOOM_REDIS_PORT"; fi
for var in $ports; do
    if port_in_use "${!var}"; then
        die "port ${!var} is already in use; choose another with $var=<port> (e.g. '$var=$((${!var} + 1)) make run')."
    fi
done

# PIBLOOM_NGINX: the nginx binary to use (found on PATH or in /usr/sbin by default); `none`: no proxy.
NGINX="${PIBLOOM_NGINX:-$(command -v nginx 2>/dev/null || true)}"
if [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ]; then NGINX=/usr/sbin/nginx; fi
if [ "$NGINX" = none ]; then NGINX=""; fi

mkdir -p "$RUN_DIR"
PROCFILE="$RUN_DIR/Procfile"
{
    echo "api: exec '$VENV_BIN/pibloom' serve"
    echo "web: HOST=127.0.0.1 PORT=\$PIBLOOM_WEB_PORT PIBLOOM_API_URL=http://127.0.0.1:\$PIBLOOM_PORT exec node web/server/index.js"
} >"$PROCFILE"

if [ -n "$REDIS" ]; then
    export PIBLOOM_RATE_LIMIT_STORAGE="${PIBLOOM_RATE_LIMIT_STORAGE:-redis://127.0.0.1:$PIBLOOM_REDIS_PORT/0}"
    # Counts only: nothing saved to disk.
    echo "redis: exec '$REDIS' --port \$PIBLOOM_REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no" >>"$PROCFILE"
else
    echo "run-local: redis-server not found: rate limits (PIBLOOM_RATE_LIMIT) count per api process." >&2
fi

if [ -n "$NGINX" ]; then
    conf="$("$VENV_BIN/python" scripts/render_proxy.py --out "$RUN_DIR/nginx")"
    "$NGINX" -t -q -p "$RUN_DIR/nginx" -c "$conf" -e stderr || die "nginx rejected $conf (see above)."
    echo "proxy: exec '$NGINX' -p '$RUN_DIR/nginx' -c '$conf' -e stderr -g 'daemon off;'" >>"$PROCFILE"
    URL="http://127.0.0.1:$PIBLOOM_PROXY_PORT/"
    API_URL="$URL"
else
    URL="http://127.0.0.1:$PIBLOOM_WEB_PORT/"
    API_URL="http://127.0.0.1:$PIBLOOM_PORT/"
    echo "run-local: nginx not found, so there is no proxy: everything is served through Express." >&2
    echo "  Get nginx with 'sudo make system-deps' (Debian/Ubuntu: apt-get install nginx; macOS: brew install nginx)." >&2
fi
# Announces when the model is loaded, then idles: honcho stops everything when any process exits.
echo "ready: exec '$VENV_BIN/python' scripts/announce_ready.py --api http://127.0.0.1:\$PIBLOOM_PORT '$URL'" >>"$PROCFILE"

echo "piBLOOM: open $URL  (REST API: ${API_URL}v1/, docs: ${API_URL}docs). Ctrl-C stops all."
# Settings come from the shell environment; an empty env file keeps honcho from reading ./.env
# (that file holds docker compose settings).
: >"$RUN_DIR/honcho.env"
exec "$VENV_BIN/honcho" -e "$RUN_DIR/honcho.env" -f "$PROCFILE" -d "$ROOT" start
