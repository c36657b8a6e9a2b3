"""The `pibloom` command: serve under gunicorn, terminal chat, settings table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from pibloom.cli import main
from pibloom.serving.lifecycle import ModelHost
from pibloom.settings import Settings

from support import free_port, pibloom_serve


def test_settings_table_documents_every_variable() -> None:
    result = CliRunner().invoke(main, ["settings", "--markdown"])
    assert result.exit_code == 0
    for name in Settings.model_fields:
        assert f"`PIBLOOM_{name.upper()}`" in result.output


def test_settings_come_from_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PIBLOOM_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("PIBLOOM_API_KEYS", "a, b")
    monkeypatch.setenv("PIBLOOM_CORS_ORIGINS", "https://x.example")
    s = Settings()
    assert (s.max_batch_size, s.api_keys, s.cors_origins) == (7, ["a", "b"], ["https://x.example"])


def test_terminal_chat_streams_a_reply(api: tuple[str, ModelHost]) -> None:
    url, _ = api
    result = CliRunner().invoke(main, ["chat", "--url", url, "--max-tokens", "6"], input="Hello\n/reset\nHi\n\n")
    assert result.exit_code == 0, result.output
    assert "tiny-bloom" in result.output
    assert result.output.count("bot ") == 2


def test_terminal_chat_reports_an_unreachable_server() -> None:
    result = CliRunner().invoke(main, ["chat", "--url", f"http://127.0.0.1:{free_port()}"], input="\n")
    assert result.exit_code == 1
    assert "cannot reach" in result.output


def test_serve_runs_gunicorn_and_drains_on_sigterm(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`pibloom serve` answers, and SIGTERM lets an in-flight generation finish before exiting."""
    with pibloom_serve(tiny_model_dir, tmp_path, PIBLOOM_GRACEFUL_TIMEOUT="90") as (proc, url, log_path):
        body = {
            "model": "tiny-bloom",
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 600,
            "temperature": 0,
            "stream": True,
        }
        chunks: list[str] = []
        started = threading.Event()

        def consume() -> None:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        chunks.append(line[6:])
                        started.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert started.wait(60)
        at_signal = len(chunks)
        proc.send_signal(signal.SIGTERM)
        reader.join(120)
        assert chunks[-1] == "[DONE]"
        final = json.loads(chunks[-2])
        assert final["choices"][0]["finish_reason"] == "length"
        assert final["usage"]["completion_tokens"] == 600
        assert at_signal < len(chunks) - 2  # the generation really was in flight when SIGTERM came
        assert proc.wait(60) == 0
    assert "Booting worker" in log_path.read_text()


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    missing = [f"PIBLOOM_{name.upper()}" for name in Settings.model_fields if f"`PIBLOOM_{name.upper()}`" not in readme]
    assert not missing, f"README.md's configuration table lacks {missing}; run `pibloom settings --markdown`"


def test_openmp_threads_spin_unless_the_operator_tuned_them_or_asked_for_passive() -> None:
    from pibloom.engine.openmp import configure

    environ: dict[str, str] = {}
    configure(Settings(), environ)
    assert environ == {"GOMP_SPINCOUNT": "10000"}
    own = {"GOMP_SPINCOUNT": "500"}  # an operator's own tuning stays as it is
    configure(Settings(), own)
    assert own == {"GOMP_SPINCOUNT": "500"}
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}  # as the Makefile exports it for the test stack
    configure(Settings(), passive)
    assert passive == {"OMP_WAIT_POLICY": "PASSIVE"}
    configure(Settings(omp_spin=True), passive)  # asked for explicitly: it wins over the environment
    assert passive == {"GOMP_SPINCOUNT": "10000"}
    asked: dict[str, str] = {}
    configure(Settings(omp_spin=False), asked)
    assert asked == {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize(("spin", "count"), [("true", "10000"), ("false", "0")])
def test_the_wait_policy_reaches_openmp_before_torch_loads(spin: str, count: str) -> None:
    """libgomp reads its environment once, when torch loads it: `pibloom serve` must set it before
    the worker imports the app (which imports torch); neither the CLI nor the gunicorn master loads torch."""
    script = (
        "import os, sys\n"
        "from pibloom import cli\n"
        "assert 'torch' not in sys.modules\n"
        "cli.openmp.configure(cli.Settings(), os.environ)\n"
        "import pibloom.http.server\n"
        "assert 'torch' not in sys.modules  # the gunicorn master stays small\n"
        "import pibloom.http.app\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env |= {"OMP_DISPLAY_ENV": "verbose", "PIBLOOM_OMP_SPIN": spin, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"GOMP_SPINCOUNT = '{count}'" in done.stderr


def test_the_gunicorn_master_loads_neither_the_web_framework_nor_the_settings_nor_the_other_commands() -> None:
    """Whatever the master imports, every worker forked from it holds too: `pibloom serve` imports the
    batch client and the bench only when those commands run, and then execs a master that imports
    gunicorn and its worker class, not pydantic, the settings or the web framework (workers do)."""
    script = (
        "import sys\n"
        "from pibloom import cli\n"
        "import pibloom.http.server\n"
        "print(sorted(m for m in ('fastapi', 'starlette', 'httpx', 'rich', 'jsonschema', 'yaml', 'pibloom.client.cli',"
        " 'pibloom.bench.cli') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    script = (
        "import sys\n"
        "import pibloom.http.master, uvicorn_worker\n"
        "print(sorted(m for m in ('pydantic', 'pibloom.settings', 'fastapi', 'starlette', 'torch', 'psutil',"
        " 'prometheus_client') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_batch_and_bench_load_when_they_run() -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["--help"])
    assert listed.exit_code == 0
    assert "batch" in listed.output and "bench" in listed.output
    for command in ("batch", "bench"):
        shown = runner.invoke(main, [command, "--help"])
        assert shown.exit_code == 0, shown.output
        assert shown.output.startswith(f"Usage: main {command} [OPTIONS]")


def test_a_command_whose_extras_are_missing_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    from pibloom import cli

    monkeypatch.setitem(cli._LazyGroup.lazy, "bench", ("pibloom_no_such_extra", "bench_command"))
    shown = CliRunner().invoke(main, ["bench", "--help"])
    assert shown.exit_code == 1
    assert "`pibloom bench` needs pibloom_no_such_extra, one of the dev extras" in shown.output
