"""Peers as subprocesses: readiness, early exit, stopping the whole process group, memory sampling."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pibloom.bench.peers import (
    Launch,
    RssSampler,
    ServerStartError,
    free_port,
    llama_launch,
    llama_supports,
    pibloom_launch,
    process_tree_rss,
    running,
)

# A stand-in peer: a parent that starts a child (like gunicorn and its worker) and serves HTTP.
TREE_SERVER = """
import http.server, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("child", child.pid, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def test_running_waits_for_ready_and_stops_the_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIBLOOM_API_KEYS", "secret")
    monkeypatch.setenv("PIBLOOM_DTYPE", "float32")
    port = free_port()
    log = tmp_path / "logs" / "peer.log"
    env = {"PIBLOOM_BENCH_TEST": "1"}
    launch = Launch([sys.executable, "-c", TREE_SERVER, str(port)], env, "/", ("PIBLOOM_API_KEYS",))
    with running(launch, port, log, ready_timeout=20) as server:
        assert server.base_url == f"http://127.0.0.1:{port}"
        assert server.startup_s > 0
        tree = psutil.Process(server.pid).children(recursive=True)
        assert len(tree) == 1
        assert server.rss() > psutil.Process(server.pid).memory_info().rss  # parent + child
        seen = psutil.Process(server.pid).environ()
        assert seen["PIBLOOM_BENCH_TEST"] == "1"
        assert seen["PIBLOOM_DTYPE"] == "float32"  # other settings pass through, to try them
        assert "PIBLOOM_API_KEYS" not in seen  # the bench sends no key
        child = tree[0]
    assert server.process.returncode is not None
    child.wait(10)  # the child went with its group: waiting would time out otherwise
    assert not child.is_running()


# A bench that SIGTERM reaches while a peer runs: it prints the peer's pid, then waits.
TERMINATED_BENCH = """
import sys, time
from pathlib import Path
from pibloom.bench.peers import Launch, running, stop_servers_on_sigterm
stop_servers_on_sigterm()
port, log, server = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with running(Launch([sys.executable, "-c", server, str(port)], {}, "/"), port, log, ready_timeout=20) as peer:
    print(peer.pid, flush=True)
    time.sleep(120)
"""


def test_sigterm_to_the_bench_stops_its_servers(tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-c", TERMINATED_BENCH, str(free_port()), str(tmp_path / "peer.log"), TREE_SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert bench.stdout is not None
    peer = psutil.Process(int(bench.stdout.readline()))
    tree = [peer, *peer.children(recursive=True)]
    bench.terminate()
    assert bench.wait(40) == 128 + signal.SIGTERM
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"left running after the bench was terminated: {alive}"


def test_a_peer_that_exits_fails_fast_with_its_log(tmp_path: Path) -> None:
    launch = Launch([sys.executable, "-c", "print('no model here'); raise SystemExit(3)"])
    with (
        pytest.raises(ServerStartError, match=r"exited with 3:\nno model here"),
        running(launch, free_port(), tmp_path / "x.log", ready_timeout=20),
    ):
        pass


def test_a_missing_program_is_a_start_error(tmp_path: Path) -> None:
    with (
        pytest.raises(ServerStartError, match=r"cannot run .*no-such-server"),
        running(Launch([str(tmp_path / "no-such-server")]), free_port(), tmp_path / "x.log", ready_timeout=5),
    ):
        pass


def test_a_peer_that_never_gets_ready_times_out(tmp_path: Path) -> None:
    launch = Launch([sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(60)"])
    with (
        pytest.raises(ServerStartError, match=r"not ready after 1 s:\nloading"),
        running(launch, free_port(), tmp_path / "x.log", ready_timeout=1),
    ):
        pass


def test_rss_of_this_process_and_its_peak() -> None:
    gc.collect()  # what earlier tests left to free is freed now, not while the sampler runs
    mine = process_tree_rss(os.getpid())
    assert mine is not None and mine > 10 * 1024 * 1024
    with RssSampler(os.getpid(), interval=0.01) as sampler:
        ballast = bytearray(64 * 1024 * 1024)
        ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page so it is resident
    assert sampler.peak is not None and sampler.peak >= mine + 60 * 1024 * 1024
    del ballast
    assert process_tree_rss(2**22 + 12345) is None  # no such process


def test_launch_commands(tmp_path: Path) -> None:
    piboom = pibloom_launch(8123, batching=False)
    assert piboom.argv[1:] == ["-m", "pibloom.cli", "serve"]
    assert piboom.env["PIBLOOM_PORT"] == "8123"
    assert piboom.env["PIBLOOM_BATCHING"] == "false"
    assert pibloom_launch(8123, batching=True).env["PIBLOOM_BATCHING"] == "true"
    assert "PIBLOOM_API_KEYS" in piboom.unset
    llama = llama_launch(tmp_path / "llama-server", tmp_path / "m.gguf", 8124, concurrency=16, max_tokens=128)
    args = llama.argv
    assert args[args.index("-np") + 1] == "16"
    assert int(args[args.index("-c") + 1]) >= 16 * (128 + 256)  # every slot holds prompt + completion
    assert args[args.index("-m") + 1] == str(tmp_path / "m.gguf")
    assert llama.ready_path == "/health"
    assert "OMP_WAIT_POLICY" in llama.unset  # the peer runs with its own threading defaults
    assert "--kv-unified" not in args
    assert "--kv-unified" in llama_launch(tmp_path, tmp_path, 1, 1, 1, unified_kv=True).argv


def test_pibloom_runs_at_its_serving_defaults_unless_the_passive_peer_is_asked_for() -> None:
    default = pibloom_launch(8123, batching=True)
    assert not {"PIBLOOM_OMP_SPIN", "PIBLOOM_ADAPTIVE_THREADS"} & set(default.env)
    # the Makefile's passive policy for its tests must not reach the "defaults" peer either
    assert {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS"} <= set(default.unset)
    passive = pibloom_launch(8123, batching=True, passive=True).env
    assert passive["PIBLOOM_OMP_SPIN"] == passive["PIBLOOM_ADAPTIVE_THREADS"] == "false"


def test_llama_server_for_the_chat_cases_has_room_for_the_long_conversation(tmp_path: Path) -> None:
    def context(unified: bool) -> int:
        argv = llama_launch(tmp_path, tmp_path, 1, 16, 128, unified_kv=unified, long_context=4400).argv
        return int(argv[argv.index("-c") + 1])

    assert context(True) == 16 * 512 + 4400  # one shared buffer: the slots' room plus the long one
    assert context(False) == 16 * 4400  # split evenly: every slot must fit the long one


def test_llama_supports_reads_the_help(tmp_path: Path) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho '-kvu, --kv-unified  one KV buffer'\n")
    fake.chmod(0o755)
    assert llama_supports(fake, "--kv-unified")
    assert not llama_supports(fake, "--no-such-flag")
    assert not llama_supports(tmp_path / "missing", "--kv-unified")
