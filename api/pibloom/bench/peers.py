"""The peers under test: each one a server process on a free loopback port, started, awaited and stopped.

piBLOOM peers run `pibloom serve` from this same environment (one server for every level), at its
serving defaults (`pibloom-passive` has its OpenMP threads sleep between operations with a fixed team,
the defaults before the thread governor); `llama-server` is
restarted per level, because its slot count (`-np`) must equal the concurrency. The OpenVINO GenAI
peer is no server: see openvino_peer.py.
Each server runs in its own process group so that stopping it also stops its workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

# The bench sends no API key and, from one address, more requests than a per-client limit allows: the
# user's own keys and rate limit must not reach the peers.
UNSET_FOR_PIBLOOM = ("PIBLOOM_API_KEYS", "PIBLOOM_API_KEYS_FILE", "PIBLOOM_RATE_LIMIT", "PIBLOOM_RATE_LIMIT_BURST")
# The Makefile exports a passive OpenMP wait policy for its test stack; `pibloom serve` run by a user
# has none, so the peers measured "at serving defaults" must not inherit it either.
UNSET_OPENMP = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
# llama-server is built with OpenMP; a passive wait policy meant for piBLOOM's test stack (the Makefile
# exports one) cut it from ~99 to ~40 tok/s for a single stream here. The peer runs with its defaults.
UNSET_FOR_LLAMA = UNSET_OPENMP
PIBLOOM = "pibloom"
PIBLOOM_PASSIVE = "pibloom-passive"
UNBATCHED = "unbatched"
LLAMA = "llama-server"
OPENVINO = "openvino"
PEERS = (PIBLOOM, PIBLOOM_PASSIVE, UNBATCHED, LLAMA, OPENVINO)
# What `make bench` measures; the passive piBLOOM is an extra, asked for with --peers.
DEFAULT_PEERS = (PIBLOOM, UNBATCHED, LLAMA, OPENVINO)
PIBLOOM_PEERS = (PIBLOOM, PIBLOOM_PASSIVE, UNBATCHED)
# Peers that may be absent without failing the run (built or installed on demand, or not on this CPU).
OPTIONAL_PEERS = (LLAMA, OPENVINO)
LABELS = {
    PIBLOOM: "piBLOOM",
    PIBLOOM_PASSIVE: "piBLOOM passive",
    UNBATCHED: "piBLOOM unbatched",
    LLAMA: "llama.cpp llama-server",
    OPENVINO: "OpenVINO GenAI int4 (in-process)",
}


class ServerStartError(RuntimeError):
    """A peer exited or did not become ready in time; the message carries its log's tail."""


@dataclass(frozen=True)
class Launch:
    """How to start one server process and how to tell it is ready."""

    argv: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    ready_path: str = "/health/ready"
    unset: tuple[str, ...] = ()  # inherited variables the server must not see


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_count() -> int:
    """Cores this process may use (the container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pibloom_launch(port: int, batching: bool, passive: bool = False) -> Launch:
    """`pibloom serve` from this environment; other PIBLOOM_* variables pass through, to try settings."""
    env = {
        "PIBLOOM_HOST": "127.0.0.1",
        "PIBLOOM_PORT": str(port),
        "PIBLOOM_MODEL": "default",
        "PIBLOOM_BATCHING": "true" if batching else "false",
        "PIBLOOM_LOG_LEVEL": "warning",
    }
    if passive:
        # The defaults before the thread governor: threads sleep between operations, the team is fixed.
        env["PIBLOOM_OMP_SPIN"] = "false"
        env["PIBLOOM_ADAPTIVE_THREADS"] = "false"
    unset = UNSET_FOR_PIBLOOM + UNSET_OPENMP
    return Launch([sys.executable, "-m", "pibloom.cli", "serve"], env, "/health/ready", unset)


def llama_supports(binary: Path, flag: str) -> bool:
    """Whether this llama-server build knows `flag` (its options change between versions)."""
    try:
        shown = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in shown.stdout + shown.stderr


def llama_launch(
    binary: Path,
    gguf: Path,
    port: int,
    concurrency: int,
    max_tokens: int,
    unified_kv: bool = False,
    long_context: int = 0,
) -> Launch:
    """`-np concurrency` slots, each with room for prompt + completion; `long_context` tokens more
    for one long conversation (the chat cases)."""
    per_slot = max(512, max_tokens + 384)
    # Without a unified cache the context is split evenly over the slots: every slot must fit the long one.
    context = per_slot * concurrency + long_context if unified_kv else max(per_slot, long_context) * concurrency
    threads = str(cpu_count())
    argv = [
        str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "-t", threads, "-tb", threads, "-np", str(concurrency), "-c", str(context),
    ]  # fmt: skip
    if unified_kv:
        # One KV buffer shared by all slots: on CPU, per-slot buffers made 16 streams ~6x slower
        # (20 vs 133 tok/s measured here), which would flatter piBLOOM.
        argv.append("--kv-unified")
    return Launch(argv, {}, "/health", UNSET_FOR_LLAMA)


def process_tree_rss(pid: int) -> int | None:
    """Resident bytes of a process and all its descendants (None once it is gone)."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0
    for proc in members:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


class RssSampler:
    """Samples a process tree's RSS in a thread for the length of a `with` block: the peak, and every
    sample as (seconds since the block began, bytes)."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.peak: int | None = None
        self.samples: list[tuple[float, int]] = []
        self._began = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = process_tree_rss(self.pid)
        if rss is None:
            return
        self.samples.append((time.monotonic() - self._began, rss))
        if self.peak is None or rss > self.peak:
            self.peak = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._began = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class RunningServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_s: float

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int | None:
        return process_tree_rss(self.pid)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(base_url: str, path: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Poll `path` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        while True:
            if process.poll() is not None:
                raise ServerStartError(f"server exited with {process.returncode}:\n{_log_tail(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(path).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ServerStartError(f"server not ready after {timeout:.0f} s:\n{_log_tail(log_path)}")
            time.sleep(0.25)


def stop(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it outlives `grace` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def stop_servers_on_sigterm() -> None:
    """Servers run in sessions of their own (a terminal's Ctrl-C must not reach them half-way), so a
    SIGTERM to the bench (`timeout`, the end of a CI job) would leave them serving. As SystemExit it
    unwinds through `running`, which stops them."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


@contextlib.contextmanager
def running(launch: Launch, port: int, log_path: Path, ready_timeout: float = 600.0) -> Iterator[RunningServer]:
    """Start `launch`, wait for readiness, yield it, and always stop it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in launch.unset} | dict(launch.env)
    started = time.monotonic()
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                launch.argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            raise ServerStartError(f"cannot run {launch.argv[0]}: {exc}") from exc
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, launch.ready_path, process, log_path, ready_timeout)
        yield RunningServer(base_url, process, log_path, time.monotonic() - started)
    finally:
        stop(process)
