"""The compiled decode graphs built ahead of time (AOTInductor) in a child process, kept in the model
cache, and run in the worker as packages.

`torch.compile` in the worker traces and compiles the graphs at every start (48 of the 60 s to ready
with a warm cache, measured), keeps the traces, guards and fake tensors in memory for good, and
needs a second set of graphs for the thread governor's team of one (it guards on the thread count).
A package is the same inductor output as a shared object: it loads in under a second, each call is
one C++ function (one row 3.4 against 4.2 ms, measured), and a package built for two threads runs on
a team of one with identical outputs, as fast as one built for one thread (its kernels share work
out in OpenMP loops), so one set serves every team size.

Two packages, as `CompiledDecode.warm` compiles two graphs: the decoder stack for many rows (rows
dynamic, its 4-bit weights re-blocked for inductor's AMX or AVX-512 GEMM and stored beside it) and the
stack for one row, which is handed the lean pass's tensors rather than a copy. Where the many-row
graph re-blocks the weights (AMX), the one-row graph computes with piBLOOM's kernel for that layout
(`int4_blocked`) and the lean pass takes the many-row graph's weights and scales in place of its own
(`_adopt`): one copy of the projections in the worker, not two. Elsewhere it runs torch's int4 kernel
over the lean pass's weights in torch's layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import compiled_decode, cpu, int4_blocked

if TYPE_CHECKING:
    from ..settings import Settings
    from .llama_forward import LlamaForward

FORMAT = 5  # bump when what is built changes in a way the fingerprint does not see
BLOCKED = "blocked"  # built.json's "one": the one-row graph reads re-blocked weights (`int4_blocked`)
_MAX_ROWS = 1 << 16  # prompt chunks run through the many-row graph, a token a row
# Package options beside the graphs': the weights in a blob of their own, read once (inside the .so they
# were held twice, 474 against 348 MB for two packages, measured).
_PACKAGE_OPTIONS: dict[str, Any] = {
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.package_constants_on_disk_format": "binary_blob",
}
_BUILD_TIMEOUT = 1800.0


class PackageError(RuntimeError):
    """The packages could not be built or loaded; the caller compiles in process instead."""


def _stack_buffers(forward: LlamaForward) -> dict[str, torch.Tensor]:
    return dict(compiled_decode._Stack(forward).named_buffers())


def fingerprint(forward: LlamaForward) -> str:
    """What the packages depend on: the weights themselves, torch, the CPU, the options."""
    digest = hashlib.blake2b(digest_size=16)
    tensors = sorted(_stack_buffers(forward).items())
    meta = {
        "format": FORMAT,
        "torch": torch.__version__,
        "cpu": cpu.flags(),
        "machine": platform.machine(),
        "options": compiled_decode._OPTIONS,
        "threads": torch.get_num_threads(),
    }
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, tensor in tensors:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class Package:
    """One package's graph, run through torch's C++ runner: no Python between its kernels."""

    def __init__(self, folder: Path, constants: dict[str, torch.Tensor] | None = None) -> None:
        so = next(folder.rglob("*.wrapper.so"))
        blob = next(folder.rglob("*.wrapper_weights.blob"))
        # The AMX kernels fault unless the process has asked the kernel for AMX state, which
        # inductor's Python runtime does and the C++ runner does not.
        torch._C._cpu._init_amx()
        self.runner = torch._C._aoti.AOTIModelContainerRunnerCpu(str(so), 1)
        if constants is None:
            self.runner.update_constant_buffer_from_blob(str(blob))
            return
        # The runner reads these tensors in place (user-managed): no copy. Freezing adds constants of its
        # own (the embedded model's one-row graph: 120 integer scalars), taken from the package.
        fqns = self.runner.get_constant_names_to_original_fqns()
        own = _stored_constants(so, blob, set(fqns.values()) - set(constants))
        given = {name: constants[fqn] if fqn in constants else own[fqn] for name, fqn in fqns.items()}
        self.runner.update_constant_buffer(given, False, True, True)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.runner.run(list(inputs))[0]
        return out


_OWN_CONSTANT_LIMIT = 1 << 20  # bytes of the package's own constants copied beside the model's tensors


def _stored_constants(so: Path, blob: Path, names: set[str]) -> dict[str, torch.Tensor]:
    """Copies of the package's stored constants `names`, read through a runner that is then let go
    (with the rest of the blob it read); they must be small, or the package is not one to share."""
    if not names:
        return {}
    scratch = torch._C._aoti.AOTIModelContainerRunnerCpu(str(so), 1)
    scratch.update_constant_buffer_from_blob(str(blob))
    stored = scratch.extract_constants_map(False)
    missing = sorted(names - set(stored))
    if missing:
        raise PackageError(f"the package wants constants neither it nor the model has: {missing[:3]}")
    own = {name: stored[name].clone() for name in names}
    size = sum(t.numel() * t.element_size() for t in own.values())
    if size > _OWN_CONSTANT_LIMIT:
        raise PackageError(f"the package holds {size / 1e6:.0f} MB of weights of its own, not the model's")
    return own


class Packages:
    """The stack for one row and for many, as `CompiledDecode` calls a graph: (h, cos, sin) -> h."""

    def __init__(self, one: Package, many: Package) -> None:
        self.one, self.many = one, many

    def __call__(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rows = h.shape[0]
        if rows > _MAX_ROWS:
            raise compiled_decode.NotCovered(f"{rows} rows, more than the packages take ({_MAX_ROWS})")
        return (self.one if rows == 1 else self.many)(h, cos, sin)


def folder(cache: Path, forward: LlamaForward) -> Path:
    return cache / "decode-packages" / fingerprint(forward)


def _kernels(where: Path) -> Path:
    """The model cache's directory of piBLOOM's kernels (`where` is cache/decode-packages/<fingerprint>)."""
    return where.parent.parent / "kernels"


def load(where: Path, forward: LlamaForward) -> Packages:
    """The packages in `where`, run on the lean pass's tensors; where the one-row graph was built for
    re-blocked weights, the lean pass first takes the many-row graph's (`_adopt`)."""
    try:
        built = json.loads((where / "built.json").read_text())
    except (OSError, ValueError) as exc:
        raise PackageError(f"no packages in {where}") from exc
    compiled_decode._attention_operator()  # the graphs call it by name: it must be registered first
    try:
        many = Package(where / "many")
        if built.get("one") == BLOCKED:
            int4_blocked.load(_kernels(where))
            if not _adopt(forward, many):
                raise PackageError("the many-row package does not hold every projection re-blocked")
        one = Package(where / "one", constants=_stack_buffers(forward))
    except PackageError:
        raise
    except Exception as exc:  # a missing file, a runner that will not load: never a failed start
        raise PackageError(f"cannot load the packages in {where}: {type(exc).__name__}: {exc}") from exc
    return Packages(one, many)


def _reblocked(many: Package, forward: LlamaForward) -> list[tuple[Any, torch.Tensor, torch.Tensor]] | None:
    """For each of the lean pass's 4-bit projections, the many-row graph's re-blocked copy of its weights
    and its copy of the scales (by name); None unless every projection has both. Inductor names the
    re-blocked weights by number, so each is found as the tensor of its shape through which piBLOOM's
    kernel gives, on a random probe, what torch's kernel gives through the lean pass's own weights:
    bit for bit, as the kernel computes torch's product exactly. (Re-blocking the lean pass's weights
    to compare them byte for byte took 1.1 s of every start: torch's kernel over identity rows.)"""
    assert forward.int4_layers is not None
    stored = many.runner.extract_constants_map(False)  # the runner's own tensors, not copies
    names = many.runner.get_constant_names_to_original_fqns()
    by_name = {names.get(key, key): tensor for key, tensor in stored.items()}
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for tensor in stored.values():
        if tensor.dtype == torch.uint8:
            by_shape.setdefault(tuple(tensor.shape), []).append(tensor)
    generator = torch.Generator().manual_seed(0)
    found = []
    for index, layer in enumerate(forward.int4_layers):
        for name, linear in layer.items():
            assert linear is not None
            scales = by_name.get(f"{name}_scales{index}")
            if linear.blocked or scales is None or not torch.equal(scales, linear.scales_zeros):
                return None
            probe = torch.randn(2, linear.in_features, generator=generator).to(scales.dtype)
            want = torch._weight_int4pack_mm_for_cpu(probe, linear.packed, linear.group, scales)
            candidates = by_shape.get(tuple(linear.packed.shape), [])
            weights = next(
                (c for c in candidates if torch.equal(int4_blocked.matmul(probe, c, scales, linear.group), want)), None
            )
            if weights is None:
                return None
            found.append((linear, weights, scales))
    return found


def _adopt(forward: LlamaForward, many: Package) -> bool:
    """Where the many-row graph holds every projection re-blocked, the lean pass computes with those
    weights and scales from now on and its own copies go (63 and 13 MB for the embedded model).
    Whether it did: all projections or none."""
    found = _reblocked(many, forward)
    for linear, weights, scales in found or ():
        linear.adopt(weights, scales, many)
    return found is not None


def build_in_child(settings: Settings, where: Path, timeout: float = _BUILD_TIMEOUT) -> float:
    """Build the packages in a child process that loads the model as this one did: the compiler's
    imports and scratch never enter the server. Returns the seconds it took."""
    start = time.perf_counter()
    env = {**os.environ, "PIBLOOM_BUILD_THREADS": str(torch.get_num_threads())}
    command = [sys.executable, "-m", "pibloom.engine.decode_packages", str(where)]
    try:
        done = subprocess.run(
            command, input=settings.model_dump_json(), env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise PackageError(f"building the decode packages took more than {timeout:.0f} s") from exc
    except OSError as exc:
        raise PackageError(f"cannot start the process that builds the decode packages: {exc}") from exc
    if done.returncode != 0:
        raise PackageError(f"building the decode packages failed: {done.stderr.strip()[-1500:]}")
    if not (where / "built.json").is_file():
        raise PackageError(
            "the packages were built for other weights than the server loaded: " + done.stdout.strip()[-300:]
        )
    return time.perf_counter() - start


def _examples(forward: LlamaForward, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype, hidden, dim = forward.final_norm.dtype, forward.final_norm.shape[0], forward.head_dim
    return (
        torch.zeros(rows, hidden, dtype=dtype),
        torch.zeros(rows, 1, 1, dim, dtype=dtype),
        torch.zeros(rows, 1, 1, dim, dtype=dtype),
    )


def _compile(program: Any, target: Path, options: dict[str, Any]) -> None:
    """Compile an exported program into `target`/ (its .so and weights), by way of a .pt2 archive."""
    archive = target.with_suffix(".pt2")
    torch._inductor.aoti_compile_and_package(
        program, package_path=str(archive), inductor_configs={**compiled_decode._OPTIONS, **options}
    )
    with zipfile.ZipFile(archive) as package:
        package.extractall(target)
    archive.unlink()


def _exportable_stack(forward: LlamaForward) -> compiled_decode._Stack:
    """The decoder stack over copies of the lean pass's tensors: unlifting an export refuses buffers that
    alias the module's own tensors, and the child's copies can go."""
    stack = compiled_decode._Stack(forward).eval()
    for name, buffer in list(stack._buffers.items()):
        assert buffer is not None
        stack._buffers[name] = buffer.clone()
    return stack


def build(forward: LlamaForward, where: Path) -> None:
    """Export and compile the two graphs into `where` (run by `build_in_child`'s child)."""
    import torch._inductor  # the compiler: imported here, in the child, never by a server running packages

    compiled_decode._attention_operator()
    stack = _exportable_stack(forward)
    scratch = where.with_name(where.name + f".part{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    rows = torch.export.Dim("rows", min=2, max=_MAX_ROWS)
    with torch.inference_mode():
        many = torch.export.export(
            stack, _examples(forward, compiled_decode._TUNE_ROWS), dynamic_shapes=({0: rows}, {0: rows}, {0: rows})
        )
        _compile(many, scratch / "many", _PACKAGE_OPTIONS)
        # One row reads the lean pass's weights as they are (no copy of its own): the many-row graph's
        # re-blocked ones where it has them and piBLOOM's kernel for them builds, else torch's layout.
        layout = _one_row_layout(forward, scratch / "many", _kernels(where))
        if layout == BLOCKED:  # over the weights the lean pass has just taken
            stack = _exportable_stack(forward)
        one_options: dict[str, Any] = {**_PACKAGE_OPTIONS, "max_autotune_gemm_backends": "ATEN"}
        if layout == BLOCKED:  # piBLOOM's kernel called as a C function, not through the proxy executor
            shims = {torch.ops.pibloom_kernels.int4_blocked_mm.default: [int4_blocked.C_SHIM]}
            one_options["aot_inductor.custom_ops_to_c_shims"] = shims
        one = torch.export.export(stack, _examples(forward, 1))
        _compile(one, scratch / "one", one_options)
    built = {"format": FORMAT, "torch": torch.__version__, "one": layout}
    (scratch / "built.json").write_text(json.dumps(built))
    try:
        scratch.rename(where)
    except OSError:  # another process finished the same packages first: theirs serve
        shutil.rmtree(scratch, ignore_errors=True)


def _one_row_layout(forward: LlamaForward, many: Path, kernels: Path) -> str:
    """`BLOCKED` where the lean pass could take the many-row package's re-blocked weights (it then has,
    in this child), else "packed" (torch's layout)."""
    if forward.final_norm.dtype != torch.bfloat16 or int4_blocked.unavailable() is not None:
        return "packed"
    try:
        int4_blocked.load(kernels)
    except Exception as exc:  # no kernel: torch's, as before
        print(f"piBLOOM's kernel for re-blocked weights did not build: {exc}", file=sys.stderr)
        return "packed"
    return BLOCKED if _adopt(forward, Package(many)) else "packed"


def _main(argv: list[str]) -> int:
    from ..settings import Settings
    from . import loader

    where = Path(argv[1])
    settings = Settings.model_validate_json(sys.stdin.read())
    torch.set_num_threads(int(os.environ.get("PIBLOOM_BUILD_THREADS", torch.get_num_threads())))
    loaded = loader.load_model(settings.model_copy(update={"compile_decode": False}))
    forward = loaded.forward
    from .llama_forward import LlamaForward

    if not isinstance(forward, LlamaForward) or compiled_decode.unavailable(forward) is not None:
        print("no compiled decode step for this model here", file=sys.stderr)
        return 2
    found = folder(where.parent.parent, forward)
    if found != where:
        print(f"the child loaded other weights (fingerprint {found.name})")
        return 0
    where.parent.mkdir(parents=True, exist_ok=True)
    build(forward, where)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
