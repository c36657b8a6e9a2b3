"""The OpenVINO GenAI peer: the embedded model exported to int4 OpenVINO IR and run in-process by
`ContinuousBatchingPipeline` (paged attention, prefix caching), its best case on an x86 CPU.

It lives in a virtual environment of the bench's own under `$PIBLOOM_CACHE_DIR/openvino/venv`, never
in the service's: optimum-intel and nncf bring dependencies the service does not want. The bench runs
`openvino_runner.py` in that environment as a subprocess and reads one JSON object from its stdout.
Where it cannot run (not x86, no package index, no converted model) the peer is skipped with the
reason, and the rest of the bench goes on.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import venv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Pinned so that every run measures the same engine.
PACKAGES = (
    "openvino-genai==2026.4.1.0",
    "openvino-tokenizers==2026.4.1.0",
    "optimum-intel[openvino]==2.2.0",
    "nncf==3.4.0",
)
# The resolver must not pick a torch (other versions are multi-GB CUDA builds); torchvision, which it
# brings, breaks transformers' imports with torch 2.13, and the export does not need it.
TORCH_SPEC = "torch==2.13.0"
REMOVE = ("torchvision",)
# A local folder's task cannot be inferred: it is named (with the KV cache as model inputs, as the pipeline wants).
EXPORT_OPTIONS = ("--task", "text-generation-with-past", "--weight-format", "int4", "--group-size", "32")
RUNNER = Path(__file__).with_name("openvino_runner.py")
EMBEDDED_PREFIX = "SmolLM2-135M-Instruct"
Echo = Callable[[str], None]


class OpenVinoUnavailable(RuntimeError):
    """The peer cannot run here; the message is the reason shown as `skipped: <why>`."""


def root(cache_dir: Path) -> Path:
    return cache_dir / "openvino"


def venv_python(cache_dir: Path) -> Path:
    return root(cache_dir) / "venv" / "bin" / "python"


def supported_machine(machine: str) -> str | None:
    """None where OpenVINO GenAI has PyPI wheels, else why not."""
    if machine in ("x86_64", "AMD64"):
        return None
    return f"OpenVINO GenAI has no {machine} wheels on PyPI"


def converted_model(cache_dir: Path) -> Path:
    """The embedded model's Hugging Face folder that `pibloom model fetch` converted from the GGUF."""
    found = [p for p in (cache_dir / "converted").glob(f"{EMBEDDED_PREFIX}*") if (p / "config.json").is_file()]
    if not found:
        raise OpenVinoUnavailable(
            f"no converted embedded model under {cache_dir / 'converted'} (run `pibloom model fetch`)"
        )
    return max(found, key=lambda p: p.stat().st_mtime)  # the newest conversion, if the GGUF changed


def _run(cmd: Sequence[str], log: Path, what: str) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = " | ".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-3:])
        raise OpenVinoUnavailable(f"{what} failed (log: {log}): {tail}")


def ensure_venv(cache_dir: Path, echo: Echo = print) -> Path:
    """The bench's OpenVINO environment, created once; returns its python."""
    python = venv_python(cache_dir)
    stamp = python.parent.parent / "pibloom-bench-packages"
    wanted = "\n".join(PACKAGES)
    if python.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == wanted:
        return python
    home = root(cache_dir)
    home.mkdir(parents=True, exist_ok=True)
    log = home / "install.log"
    echo(f"installing OpenVINO GenAI into {python.parent.parent} (once; a few minutes; log: {log})")
    shutil.rmtree(python.parent.parent, ignore_errors=True)
    venv.create(python.parent.parent, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    _run([*pip, TORCH_SPEC], log, "installing torch")
    constraints = home / "constraints.txt"
    constraints.write_text(TORCH_SPEC + "\n", encoding="utf-8")
    _run([*pip, "-c", str(constraints), *PACKAGES], log, "installing OpenVINO GenAI")
    _run([str(python), "-m", "pip", "uninstall", "--yes", *REMOVE], log, "removing torchvision")
    stamp.write_text(wanted + "\n", encoding="utf-8")
    return python


def export_dir(cache_dir: Path, model: Path) -> Path:
    return root(cache_dir) / f"{model.name}-int4-g32"


def ensure_export(cache_dir: Path, python: Path, model: Path, echo: Echo = print) -> Path:
    """The model in OpenVINO IR with int4 weights in groups of 32, exported once (about 30 s)."""
    out = export_dir(cache_dir, model)
    if (out / "openvino_model.xml").is_file() and (out / "openvino_tokenizer.xml").is_file():
        return out
    log = root(cache_dir) / "export.log"
    echo(f"exporting {model.name} to OpenVINO int4 into {out} (once; log: {log})")
    shutil.rmtree(out, ignore_errors=True)
    # Through the module, not the `optimum-cli` script, whose shebang breaks when the cache is moved.
    cli = [str(python), "-m", "optimum.commands.optimum_cli"]
    _run([*cli, "export", "openvino", "--model", str(model), *EXPORT_OPTIONS, str(out)], log, "optimum-cli export")
    return out


@dataclass
class OpenVinoLevel:
    """What the runner measured at one concurrency: every request generated, all in one pipeline."""

    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    tokens_per_s: float | None
    ttft_p50: float | None = None


@dataclass
class OpenVinoResult:
    levels: list[OpenVinoLevel]
    cold_ttft_s: float | None = None
    next_turn_ttft_s: float | None = None
    peak_rss_bytes: int | None = None
    idle_rss_bytes: int | None = None
    versions: dict[str, str] = field(default_factory=dict)


class RunnerOutputError(ValueError):
    """The runner's stdout held no usable JSON result."""


def _opt_float(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    return None if value is None else float(value)


def parse_runner_output(stdout: str) -> OpenVinoResult:
    """The last JSON object line of the runner's stdout (libraries may print before it) as a result."""
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.strip().startswith("{")), None)
    if line is None:
        raise RunnerOutputError(f"no JSON line in the runner's output: {stdout[-300:]!r}")
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RunnerOutputError(f"the runner's last JSON line does not parse: {exc}") from exc
    if "error" in data:
        raise RunnerOutputError(f"the runner failed: {data['error']}")
    try:
        levels = [
            OpenVinoLevel(
                concurrency=int(item["concurrency"]),
                requests=int(item["requests"]),
                tokens=int(item["tokens"]),
                wall_s=float(item["wall_s"]),
                tokens_per_s=(float(item["tokens"]) / float(item["wall_s"])) if float(item["wall_s"]) > 0 else None,
                ttft_p50=_opt_float(item, "ttft_p50"),
            )
            for item in data["levels"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise RunnerOutputError(f"the runner's result lacks a field: {exc}") from exc
    return OpenVinoResult(
        levels=levels,
        cold_ttft_s=_opt_float(data, "cold_ttft_s"),
        next_turn_ttft_s=_opt_float(data, "next_turn_ttft_s"),
        peak_rss_bytes=None if data.get("peak_rss_bytes") is None else int(data["peak_rss_bytes"]),
        idle_rss_bytes=None if data.get("idle_rss_bytes") is None else int(data["idle_rss_bytes"]),
        versions={str(k): str(v) for k, v in (data.get("versions") or {}).items()},
    )


@dataclass(frozen=True)
class RunnerSpec:
    """What the runner is asked to do; written to a JSON file it reads."""

    model_dir: str
    concurrency: list[int]
    requests: dict[int, int]
    max_tokens: int
    prompts: list[str]
    threads: int
    chat_history: list[dict[str, str]] = field(default_factory=list)
    chat_follow_up: list[dict[str, str]] = field(default_factory=list)
    chat_warm: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> str:
        data = {
            "model_dir": self.model_dir,
            "levels": [{"concurrency": c, "requests": self.requests[c]} for c in self.concurrency],
            "max_tokens": self.max_tokens,
            "prompts": self.prompts,
            "threads": self.threads,
            "chat_history": self.chat_history,
            "chat_follow_up": self.chat_follow_up,
            "chat_warm": self.chat_warm,
        }
        return json.dumps(data)


def runner_command(python: Path, spec_path: Path) -> list[str]:
    # -I: the runner's own folder must not be on sys.path, where this package's modules would shadow others.
    return [str(python), "-I", str(RUNNER), str(spec_path)]


def prepare(cache_dir: Path, echo: Echo = print) -> tuple[Path, Path]:
    """Install and export as needed; the venv's python and the exported model, or OpenVinoUnavailable."""
    why = supported_machine(platform.machine())
    if why:
        raise OpenVinoUnavailable(why)
    model = converted_model(cache_dir)
    python = ensure_venv(cache_dir, echo)
    return python, ensure_export(cache_dir, python, model, echo)
