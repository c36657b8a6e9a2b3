"""Preallocated, slot-based KV caches for continuous batching.

A `SlotCache` is one *lane*: its rows share one column index (left-padded, the padding masked), so
the model sees an ordinary cache of `length` columns and builds its masks and positions as usual.
Unlike `DynamicCache`, which concatenates a new tensor at every step (copying the whole cache each
token), it writes one column in place into buffers that grow in steps, in rows and in columns,
and shrink again when what they hold falls well below their size. Rows join after a separate prefill
and leave by moving the lane's last row into their place, so a lane stays dense.

Rows of very different lengths go to different lanes (`LaneGroup` decodes several in one step), so
one long conversation neither pads every short one to its length nor makes them attend over it.

These classes have the shape of transformers' caches (`layers`, each with `keys` and `values`;
`update(keys, values, layer)`; `get_seq_length()`) without importing transformers: the lean pass
calls nothing else, and transformers' forward is handed them through `transformers_cache`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MIN_COLUMNS = 64
ROW_STEP = 2


def allocation_bound(rows: int, columns: int, max_rows: int) -> int:
    """The most token slots (rows x columns) a lane's buffers can take while it holds `rows` rows and
    reaches `columns` columns, under `SlotLayer.reserve`'s growth (rows to a multiple of two, columns
    by a quarter or 64) and `fit`'s tolerance (a quarter over the length plus 64): what admission
    counts, so the buffers stay within the KV budget."""
    if not rows:
        return 0
    return _rows_for(rows, 0, max_rows) * ((columns + MIN_COLUMNS) * 5 // 4)


def longest_row(slots: int) -> int:
    """The most columns one row alone may reach within `slots` token slots (`allocation_bound`)."""
    columns = max(0, slots * 4 // 5 - MIN_COLUMNS)
    while columns and allocation_bound(1, columns, 1) > slots:
        columns -= 1
    return columns


def _rows_for(rows: int, capacity: int, max_rows: int) -> int:
    """Rows to allocate for `rows`: exactly one for a lane's first row (a lone chat holds no spare
    row), else up to a multiple of two, so rows joining one by one reallocate every other time."""
    if rows <= 1 and not capacity:
        return rows
    return min(max_rows, -(-rows // ROW_STEP) * ROW_STEP)


class _State:
    """Shared by every layer of a lane: how many rows and columns are live."""

    def __init__(self) -> None:
        self.rows = 0
        self.length = 0


class GrowingLayer:
    """One layer of a `GrowingCache`: keys and values [rows, heads, columns, dim], concatenated."""

    def __init__(self) -> None:
        self.keys: Any = None
        self.values: Any = None
        self.is_initialized = False

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            # A copy, as transformers' concatenation onto an empty tensor makes: the states may be views
            # of a larger buffer (the fused projection's output) that the cache must not keep alive.
            keys = key_states.clone(memory_format=torch.contiguous_format)
            values = value_states.clone(memory_format=torch.contiguous_format)
            self.keys, self.values, self.is_initialized = keys, values, True
        else:
            self.keys = torch.cat((self.keys, key_states), dim=-2)
            self.values = torch.cat((self.values, value_states), dim=-2)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return 0 if not self.is_initialized else int(self.keys.shape[-2])


class _Layers:
    """What the forward passes call on a cache of layers."""

    layers: list[Any]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        result: tuple[torch.Tensor, torch.Tensor] = self.layers[layer_idx].update(key_states, value_states)
        return result

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.layers):
            return 0
        length: int = self.layers[layer_idx].get_seq_length()
        return length

    def __len__(self) -> int:
        return len(self.layers)


class GrowingCache(_Layers):
    """A cache that grows by concatenation, as transformers' `DynamicCache` does: the cache of one
    prefill (its keys and values then move into a lane, `SlotCache.insert`)."""

    def __init__(self, num_layers: int) -> None:
        self.layers = [GrowingLayer() for _ in range(num_layers)]


class SlotLayer:
    def __init__(self, state: _State, max_rows: int) -> None:
        self.keys: Any = None
        self.values: Any = None
        self.is_initialized = False
        self.state = state
        self.max_rows = max_rows
        self.capacity = 0
        self.row_capacity = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.heads, self.key_dim, self.value_dim = key_states.shape[1], key_states.shape[-1], value_states.shape[-1]
        self.is_initialized = True

    def _allocate(self, rows: int, columns: int) -> None:
        keys = self._resized(self.keys, rows, columns, self.key_dim)
        values = self._resized(self.values, rows, columns, self.value_dim)
        self.keys, self.values, self.capacity, self.row_capacity = keys, values, columns, rows

    def _resized(self, old: torch.Tensor | None, rows: int, columns: int, dim: int) -> torch.Tensor:
        """A buffer of the new size holding what `old` held; the rest zeroed (masked columns are read
        by attention with weight 0, so they must hold finite numbers). Only what is not copied is
        zeroed: under load, rows come and go all the time and these copies are the engine's largest
        memory traffic after the weights."""
        new = torch.empty((rows, self.heads, columns, dim), dtype=self.dtype, device=self.device)
        r = c = 0
        if old is not None and self.capacity:
            r, c = min(rows, self.row_capacity), min(columns, self.capacity)
            new[:r, :, :c] = old[:r, :, :c]
        new[:r, :, c:] = 0
        new[r:] = 0
        return new

    def reserve(self, columns: int, rows: int = 0) -> None:
        """Grow to hold `columns` and `rows`: columns by a quarter (at least 64), so that a row growing by
        one column a step reallocates rarely, rows by two (`_rows_for`); memory stays close to what is
        held, and within `allocation_bound`, which the engine's KV budget counts."""
        if columns <= self.capacity and rows <= self.row_capacity:
            return
        new_columns = self.capacity
        if columns > self.capacity:
            new_columns = max(columns, self.capacity + max(self.capacity // 4, MIN_COLUMNS))
        new_rows = self.row_capacity
        if rows > self.row_capacity:
            new_rows = _rows_for(rows, self.row_capacity, self.max_rows)
        self._allocate(new_rows, new_columns)

    def fit(self) -> None:
        """Give memory back once the lane holds well under its buffers (in rows or columns): what a long
        row that left grew is memory the KV budget would otherwise count against new requests."""
        if not self.is_initialized or not self.capacity:
            return
        if not self.state.rows:  # an idle lane holds nothing
            self.keys = self.values = None
            self.capacity = self.row_capacity = 0
            return
        want_rows = _rows_for(self.state.rows, 0, self.max_rows)
        want_columns = max(MIN_COLUMNS, self.state.length + MIN_COLUMNS)
        # Spare rows stay until half of them are empty: under a steady load rows leave and join one at
        # a time, and reallocating at each copies every layer's buffers (admission counts the rows
        # held, so they stay within the budget).
        spare_rows = self.state.rows * 2 <= self.row_capacity and self.row_capacity > want_rows
        if spare_rows or self.capacity > want_columns * 5 // 4:
            self._allocate(min(self.row_capacity, want_rows), min(self.capacity, want_columns))

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        rows, start = key_states.shape[0], self.state.length
        end = start + key_states.shape[-2]
        self.reserve(end, rows)
        self.keys[:rows, :, start:end] = key_states
        self.values[:rows, :, start:end] = value_states
        return self.keys[:rows, :, :end], self.values[:rows, :, :end]

    def get_seq_length(self) -> int:
        return self.state.length

    def get_max_length(self) -> int:
        return -1

    @property
    def nbytes(self) -> int:
        if not self.capacity:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


class SlotCache(_Layers):
    """One lane of the batch cache. The engine calls `advance` after every forward pass over it."""

    def __init__(self, num_layers: int, max_rows: int) -> None:
        self.state = _State()
        self.layers = [SlotLayer(self.state, max_rows) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return self.state.length

    @property
    def rows(self) -> int:
        return self.state.rows

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def reset(self, length: int) -> None:
        """Empty the lane; the next row to join is right-aligned at `length` columns."""
        self.state.rows, self.state.length = 0, length

    def row_kv(self, row: int, start: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of one row's keys and values from column `start` to the length, per layer
        ([heads, columns, dim]): what the prefix cache keeps of a finished sequence."""
        end = self.state.length
        keys = [layer.keys[row, :, start:end].clone() for layer in self.layers]
        values = [layer.values[row, :, start:end].clone() for layer in self.layers]
        return keys, values

    def advance(self, columns: int) -> None:
        self.state.length += columns

    @property
    def row_capacity(self) -> int:
        """Rows the buffers hold room for (spare ones included)."""
        return self.layers[0].row_capacity

    def insert(self, row: int, prefill: Any, src_row: int, size: int, rows: int = 0) -> None:
        """Copy the last `size` columns of `src_row` of a prefill cache into `row`, right-aligned at
        the current length (the caller shifts the lane first when the prompt is longer). `rows`: how
        many rows the lane is about to hold (more are joining), so the buffers grow once for them all."""
        length = self.state.length
        for layer, src in zip(self.layers, prefill.layers, strict=True):
            if not layer.is_initialized:
                layer.lazy_initialization(src.keys, src.values)
            layer.reserve(length, max(row + 1, rows))
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
            if not layer.is_initialized or not layer.capacity:
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
            if layer.is_initialized and layer.capacity:
                layer.keys[dst, :, :length] = layer.keys[src, :, :length]
                layer.values[dst, :, :length] = layer.values[src, :, :length]

    def set_rows(self, rows: int) -> None:
        self.state.rows = rows
        if rows == 0:
            self.state.length = 0

    def fit(self) -> None:
        for layer in self.layers:
            layer.fit()


@dataclass(frozen=True)
class LaneStep:
    """One lane's part of a decode step: its cache, its rows' slice of the batch, its padding mask."""

    cache: SlotCache
    first: int  # first batch row of the lane
    rows: int
    mask: torch.Tensor  # [rows, length + 1]: 1 where a row has a real column


class LaneGroup:
    """Several lanes decoded in one forward pass: batch rows are the lanes' rows, lane after lane."""

    def __init__(self, lanes: list[LaneStep]) -> None:
        self.lanes = lanes
