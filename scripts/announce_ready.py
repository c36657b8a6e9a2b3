"""Part of `make run`: say when the stack answers, then stay idle until stopped.

honcho stops every process as soon as one exits, so after the announcement this waits for a signal
instead of returning.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import httpx


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(urls: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending and time.monotonic() < deadline:
        if answers(pending[0]):
            pending.pop(0)
        else:
            time.sleep(1.0)
    return not pending


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the page users open")
    parser.add_argument("--api", required=True, help="the api's base URL (readiness is asked there)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the model")
    args = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))
    if wait_for([args.api.rstrip("/") + "/health/ready", args.url], args.timeout):
        print(f"piBLOOM is ready: open {args.url}", flush=True)
    else:
        print(f"piBLOOM: still not answering after {args.timeout:.0f}s; see the api log above.", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
