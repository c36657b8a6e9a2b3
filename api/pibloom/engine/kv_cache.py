"""A preallocated, slot-based KV cache for continuous batching over Hugging Face models.

All running sequences share one column index (the batch is left-padded and the padding masked), so the
model sees an ordinary cache of `length` columns and builds its masks and positions as usual. Unlike
`DynamicCache`, which concatenates a new tensor at every step (copying the whole cache each token),
this writes one column in place into buffers that grow by doubling. Rows join after a separate
prefill and leave by moving the last row into their place, so the batch stays dense.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer


class _State:
    """Shared by every layer: how many rows and columns are live."""

    def __init__(self) -> None:
        self.rows = 0
        self.length = 0


class SlotLayer(DynamicLayer):
    def __init__(self, state: _State, max_rows: int) -> None:
        super().__init__()
        self.state = state
        self.max_rows = max_rows
        self.capacity = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._allocate(key_states.shape[1], key_states.shape[-1], value_states.shape[-1], 128)
        self.is_initialized = True

    def _allocate(self, heads: int, key_dim: int, value_dim: int, capacity: int) -> None:
        shape = (self.max_rows, heads, capacity)
        keys = torch.zeros((*shape, key_dim), dtype=self.dtype, device=self.device)
        values = torch.zeros((*shape, value_dim), dtype=self.dtype, device=self.device)
        if self.keys is not None and self.capacity:
            keys[:, :, : self.capacity] = self.keys
            values[:, :, : self.capacity] = self.values
        self.keys, self.values, self.capacity = keys, values, capacity

    def reserve(self, columns: int) -> None:
        if columns > self.capacity:
            capacity = max(columns, self.capacity * 2)
            self._allocate(self.keys.shape[1], self.keys.shape[-1], self.values.shape[-1], capacity)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        rows, start = key_states.shape[0], self.state.length
        end = start + key_states.shape[-2]
        self.reserve(end)
        self.keys[:rows, :, start:end] = key_states
        self.values[:rows, :, start:end] = value_states
        return self.keys[:rows, :, :end], self.values[:rows, :, :end]

    def get_seq_length(self) -> int:
        return self.state.length

    def get_max_length(self) -> int:
        return -1


class SlotCache(Cache):
    """The batch cache. The engine calls `advance` after every forward pass over it."""

    def __init__(self, num_layers: int, max_rows: int) -> None:
        self.state = _State()
        super().__init__(layers=[SlotLayer(self.state, max_rows) for _ in range(num_layers)])

    @property
    def length(self) -> int:
        return self.state.length

    @property
    def rows(self) -> int:
        return self.state.rows

    def reset(self, length: int) -> None:
        """Empty the batch; the next row to join is right-aligned at `length` columns."""
        self.state.rows, self.state.length = 0, length

    def row_kv(self, row: int, start: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of one row's keys and values from column `start` to the length, per layer
        ([heads, columns, dim]): what the prefix cache keeps of a finished sequence."""
        end = self.state.length
        keys = [layer.keys[row, :, start:end].clone() for layer in self.layers]
        values = [layer.values[row, :, start:end].clone() for layer in self.layers]
        return keys, values

    def buffers(self, layer: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the first `rows` rows of `layer` over the buffers' whole capacity (contiguous,
        unlike their first `length` columns); columns past the length must be masked like padding."""
        slot = self.layers[layer]
        return slot.keys[:rows], slot.values[:rows]

    def advance(self, columns: int) -> None:
        self.state.length += columns

    def insert(self, row: int, prefill: Cache, src_row: int, size: int) -> None:
        """Copy the last `size` columns of `src_row` of a prefill cache into `row`, right-aligned at
        the current length (the caller shifts the batch first when the prompt is longer)."""
        length = self.state.length
        for layer, src in zip(self.layers, prefill.layers, strict=True):
            if not layer.is_initialized:
                layer.lazy_initialization(src.keys, src.values)
            layer.reserve(length)
            layer.keys[row, :, length - size : length] = src.keys[src_row, :, -size:]
            layer.values[row, :, length - size : length] = src.values[src_row, :, -size:]
            if length > size:
                # Columns under the padding are masked out; zero them so no stale value can leak.
                layer.keys[row, :, : length - size] = 0
                layer.values[row, :, : length - size] = 0
        self.state.rows = max(self.state.rows, row + 1)

    def shift(self, columns: int) -> None:
        """Move every live row right (columns > 0) or left (columns < 0) by `columns` positions."""
        rows, length = self.state.rows, self.state.length
        for layer in self.layers:
            if not layer.is_initialized:
                continue
            if columns > 0:
                layer.reserve(length + columns)
                for buf in (layer.keys, layer.values):
                    buf[:rows, :, columns : columns + length] = buf[:rows, :, :length].clone()
                    buf[:rows, :, :columns] = 0
            else:
                drop = -columns
                for buf in (layer.keys, layer.values):
                    buf[:rows, :, : length - drop] = buf[:rows, :, drop:length].clone()
        self.state.length = length + columns

    def move_row(self, src: int, dst: int) -> None:
        length = self.state.length
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys[dst, :, :length] = layer.keys[src, :, :length]
                layer.values[dst, :, :length] = layer.values[src, :, :length]

    def set_rows(self, rows: int) -> None:
        self.state.rows = rows
        if rows == 0:
            self.state.length = 0
