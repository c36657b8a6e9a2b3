"""Render proxy/nginx.conf.template for nginx running as a local process (no Docker).

The container fills the same template with the official nginx image's envsubst step; this does the
same substitution (envsubst semantics, restricted to the template's own `PIBLOOM_PROXY_*` names) with
loopback addresses, so `make run` and the end-to-end tests run the very configuration the image runs.

    python scripts/render_proxy.py --out .run/nginx     # writes .run/nginx/nginx.conf, prints its path

Tunables come from the environment (same names and defaults as proxy/Dockerfile); the listen address
and the upstreams default to loopback ports taken from PIBLOOM_PROXY_PORT, PIBLOOM_PORT and
PIBLOOM_WEB_PORT.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "proxy" / "nginx.conf.template"

# Same values as the ENV lines of proxy/Dockerfile (a deploy test keeps the two in step).
TUNABLE_DEFAULTS: dict[str, str] = {
    "PIBLOOM_PROXY_RATE_LIMIT": "10r/s",
    "PIBLOOM_PROXY_RATE_BURST": "20",
    "PIBLOOM_PROXY_MAX_BODY": "1m",
    "PIBLOOM_PROXY_READ_TIMEOUT": "900s",
    "PIBLOOM_PROXY_SHUTDOWN_TIMEOUT": "90s",
    "PIBLOOM_PROXY_METRICS_ALLOW": "127.0.0.1",
    "PIBLOOM_PROXY_TRUSTED_PROXY": "127.0.0.1",
    "PIBLOOM_PROXY_RESOLVER": "127.0.0.1",
    "PIBLOOM_PROXY_UPSTREAM_RESOLVE": "",
}

_NAME = r"PIBLOOM_PROXY_[A-Z0-9_]+"


class TemplateError(ValueError):
    """The template names a variable nobody gave a value."""


def template_variables(template: str) -> set[str]:
    return set(re.findall(r"\$\{(" + _NAME + r")\}", template))


def substitute(template: str, values: Mapping[str, str]) -> str:
    """envsubst with an explicit variable list: `${NAME}` and `$NAME` for the given names only."""
    missing = template_variables(template) - values.keys()
    if missing:
        raise TemplateError(f"no value for {', '.join(sorted(missing))}")

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values[name] if name in values else match.group(0)

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", replace, template)


def local_values(
    runtime_dir: Path, env: Mapping[str, str], listen: str | None, api: str | None, web: str | None
) -> dict[str, str]:
    values = {name: env.get(name, default) for name, default in TUNABLE_DEFAULTS.items()}
    values["PIBLOOM_PROXY_RUNTIME_DIR"] = str(runtime_dir)
    values["PIBLOOM_PROXY_LISTEN"] = listen or f"127.0.0.1:{env.get('PIBLOOM_PROXY_PORT', '8080')}"
    values["PIBLOOM_PROXY_API_UPSTREAM"] = api or f"127.0.0.1:{env.get('PIBLOOM_PORT', '8000')}"
    values["PIBLOOM_PROXY_WEB_UPSTREAM"] = web or f"127.0.0.1:{env.get('PIBLOOM_WEB_PORT', '3000')}"
    return values


def render(out_dir: Path, values: Mapping[str, str]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "nginx.conf"
    target.write_text(substitute(TEMPLATE.read_text(encoding="utf-8"), values), encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="runtime directory (config, pid, temp files)")
    parser.add_argument("--listen", help="listen address (default 127.0.0.1:$PIBLOOM_PROXY_PORT or :8080)")
    parser.add_argument("--api", help="api upstream host:port (default 127.0.0.1:$PIBLOOM_PORT or :8000)")
    parser.add_argument("--web", help="web upstream host:port (default 127.0.0.1:$PIBLOOM_WEB_PORT or :3000)")
    args = parser.parse_args(argv)
    out_dir = args.out.resolve()
    try:
        target = render(out_dir, local_values(out_dir, os.environ, args.listen, args.api, args.web))
    except TemplateError as exc:
        print(f"render_proxy: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
