"""`pibloom batch` end to end: files in, JSONL out, resume, inventories, schema mode and Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from pibloom.client.cli import batch_command

from batch_support import StartServers, wait_until

FAST = ["--health-interval", "0.1", "--no-progress"]


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(batch_command, [*args, *FAST], catch_exceptions=False)
    return result.exit_code, result.output


def test_text_file_to_results_with_summary(start_servers: StartServers, tmp_path: Path) -> None:
    (server,) = start_servers([])
    prompts = tmp_path / "films.txt"
    prompts.write_text("Alien\n\nHeat\nRan\n", encoding="utf-8")
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    code, text = run_cli(str(prompts), "-o", str(out), "-s", server.url, "--summary-json", str(summary))
    assert code == 0, text
    results = sorted(rows(out), key=lambda row: row["id"])
    assert [(row["id"], row["output"], row["error"]) for row in results] == [
        (1, "echo: Alien", None),
        (3, "echo: Heat", None),
        (4, "echo: Ran", None),
    ]
    assert set(results[0]) == {"id", "output", "server", "attempts", "latency_s", "usage", "error"}
    assert results[0]["server"] == server.url and results[0]["attempts"] == 1
    assert "done 3, failed 0" in text and "tokens/s" in text and server.url in text
    data = json.loads(summary.read_text(encoding="utf-8"))
    assert (data["done"], data["failed"], data["completion_tokens"]) == (3, 0, 6)
    assert data["servers"][0]["items"] == 3


def test_resume_skips_done_ids_and_retries_failed_ones(start_servers: StartServers, tmp_path: Path) -> None:
    (server,) = start_servers([])
    source = tmp_path / "in.jsonl"
    out = tmp_path / "out.jsonl"
    first = [{"id": n, "prompt": f"p{n}"} for n in range(4)] + [{"id": "bad", "prompt": "STATUS=400"}]
    source.write_text("".join(json.dumps(item) + "\n" for item in first), encoding="utf-8")
    code, text = run_cli(str(source), "-o", str(out), "-s", server.url)
    assert code == 1 and "failed 1" in text  # a failed item makes the exit status say so
    assert server.stats()["requests"] == 5

    more = first + [{"id": n, "prompt": f"p{n}"} for n in range(4, 10)]
    source.write_text("".join(json.dumps(item) + "\n" for item in more), encoding="utf-8")
    code, text = run_cli(str(source), "-o", str(out), "-s", server.url, "--skip-failed")
    assert code == 0, text
    assert server.stats()["requests"] == 5 + 6  # only the six new ids were sent
    assert "skipped (already done) 5" in text

    code, _ = run_cli(str(source), "-o", str(out), "-s", server.url)
    assert code == 1
    assert server.stats()["requests"] == 12  # the default retries the failed item, and only it
    ids = [row["id"] for row in rows(out)]
    assert sorted(map(str, ids)) == sorted(str(item["id"]) for item in more)  # each id exactly once


def test_servers_from_an_ansible_inventory(start_servers: StartServers, tmp_path: Path) -> None:
    one, two = start_servers([], [])
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  children:\n    pis:\n      vars:\n        ansible_host: 127.0.0.1\n      hosts:\n"
        f"        pi1:\n          pibloom_port: {one.url.rsplit(':', 1)[1]}\n"
        f"        pi2:\n          pibloom_port: {two.url.rsplit(':', 1)[1]}\n",
        encoding="utf-8",
    )
    source = tmp_path / "in.txt"
    source.write_text("".join(f"prompt {n}\n" for n in range(20)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, text = run_cli(str(source), "-o", str(out), "--servers-file", str(inventory), "--group", "pis")
    assert code == 0, text
    assert {row["server"] for row in rows(out)} == {one.url, two.url}


def test_json_schema_mode_writes_parsed_values(start_servers: StartServers, tmp_path: Path) -> None:
    (server,) = start_servers([])
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["title"]}), encoding="utf-8")
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "x", "prompt": "JSON-AFTER=1 Brazil"}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, text = run_cli(str(source), "-o", str(out), "-s", server.url, "--json-schema", str(schema))
    assert code == 0, text
    (row,) = rows(out)
    assert row["json"] == {"title": "JSON-AFTER=1 Brazil", "seed": 1} and row["attempts"] == 2


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1}\n', encoding="utf-8")
    out = str(tmp_path / "out.jsonl")
    code, text = run_cli(str(source), "-o", out, "-s", "http://127.0.0.1:9")
    assert code == 2 and "in.jsonl:1: an item needs exactly one of 'prompt' or 'messages'" in text
    code, text = run_cli(str(source), "-o", out)
    assert code == 2 and "give at least one --server" in text
    code, text = run_cli(str(source), "-o", out, "-s", "ftp://x")
    assert code == 2 and "not an http(s) server address" in text
    bad_schema = tmp_path / "schema.json"
    bad_schema.write_text('{"type": 5}', encoding="utf-8")
    source.write_text('{"id": 1, "prompt": "x"}\n', encoding="utf-8")
    code, text = run_cli(str(source), "-o", out, "-s", "http://127.0.0.1:9", "--json-schema", str(bad_schema))
    assert code == 2 and "invalid JSON Schema" in text


def test_ctrl_c_leaves_a_valid_file_and_the_rerun_completes(
    start_servers: StartServers, tmp_path: Path, client_env: dict[str, str]
) -> None:
    (server,) = start_servers(["--delay", "0.1"])
    source = tmp_path / "in.txt"
    source.write_text("".join(f"prompt {n}\n" for n in range(200)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "pibloom.client", str(source), "-o", str(out), "-s", server.url]
    proc = subprocess.Popen(
        [*command, "--per-server", "2", *FAST],
        env=client_env,
        stderr=subprocess.PIPE,
        # A shell's background jobs ignore SIGINT, and children inherit that: give it back, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_until(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 5, timeout=30)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr.decode()
    assert b"run the same command again to resume" in stderr
    assert out.read_bytes().endswith(b"\n")
    partial = rows(out)  # every line parses
    assert 5 <= len(partial) < 200 and all(row["error"] is None for row in partial)

    requests_before = server.stats()["requests"]
    code, text = run_cli(str(source), "-o", str(out), "-s", server.url, "--per-server", "16")
    assert code == 0, text
    final = rows(out)
    assert sorted(row["id"] for row in final) == list(range(1, 201))
    assert server.stats()["requests"] - requests_before == 200 - len(partial)
