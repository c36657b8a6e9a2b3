"""Compiled graphs loaded together share one copy of each constant they hold alike."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch._inductor import output_code

from pibloom.engine import graph_constants
from pibloom.engine.graph_constants import MIN_BYTES, Sharing


def _weight(seed: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (MIN_BYTES // 64, 64), generator=generator).to(dtype)


def test_an_equal_constant_is_swapped_for_the_first_and_others_are_left_alone() -> None:
    sharing = Sharing()
    first = _weight(1)
    assert sharing.canonical(first) is first
    assert sharing.canonical(first.clone()) is first
    assert (sharing.shared, sharing.saved_bytes) == (1, MIN_BYTES)
    other = _weight(2)
    assert sharing.canonical(other) is other  # other contents
    same_bytes = first.clone().view(torch.int8)
    assert sharing.canonical(same_bytes) is same_bytes  # the same bytes as another dtype
    small = first[:2].clone()
    assert sharing.canonical(small) is small and sharing.canonical(small.clone()) is not small  # not hashed
    strided = torch.cat([first, first], dim=1)[:, ::2]
    assert sharing.canonical(strided) is strided
    assert sharing.canonical("a name") == "a name"
    scales = torch.ones(MIN_BYTES // 4)
    for opaque in (first.float().to_sparse(), torch.quantize_per_tensor(scales, 0.1, 0, torch.qint8)):
        assert sharing.canonical(opaque) is opaque  # no plain bytes to compare: left as it is
    assert sharing.shared == 1


def test_graphs_loaded_inside_the_block_get_the_first_copy_and_inductor_is_restored_after() -> None:
    originals = {cls: cls.__dict__["unwrap"] for cls in graph_constants._unwrapping_classes()}
    assert output_code.CompiledFxGraphConstants in originals  # inductor still hands constants out here
    first = _weight(3, torch.bfloat16)
    graphs = [
        SimpleNamespace(constants={"w": t, "tiny": torch.ones(2)}, opaque_value_type_classes={})
        for t in (first, first.clone())
    ]
    with graph_constants.shared() as sharing:
        loaded = [output_code.CompiledFxGraphConstants().unwrap(graph) for graph in graphs]
    assert loaded[0]["w"] is first and loaded[1]["w"] is first
    assert graphs[1].constants["w"] is first  # the graph's own dict no longer holds its copy
    assert sharing.saved_bytes == first.numel() * first.element_size()
    assert {cls: cls.__dict__["unwrap"] for cls in originals} == originals
    copy = first.clone()
    unshared = output_code.CompiledFxGraphConstants().unwrap(
        SimpleNamespace(constants={"w": copy}, opaque_value_type_classes={})
    )
    assert unshared["w"] is copy
