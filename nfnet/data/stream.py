"""The order of a streamed split, and the bounded row-group buffer that serves it.

A streamed split (Parquet, `nfnet.data.parquet`) is a list of G row groups of known sizes; example
i is row i - offset[g] of the row group g that holds it. The order of an epoch is a pure function
of (seed, epoch, row-group sizes, process_index, process_count, window), so a run resumed at step
s needs only s (no iterator state, no replay):

1. the epoch's row-group order is `numpy.random.default_rng([seed, e]).permutation(G)`;
2. process p of P takes positions p, p + P, p + 2P, ... of it (its own row groups, read by it alone);
3. its row groups are cut into windows of W consecutive ones (`--shuffle-window`), and the rows of
   window k are permuted by `default_rng([seed, e, p, k])`: a shuffle buffer of W row groups;
4. its stream of the epoch is those windows one after the other; local step s takes stream positions
   [(s % spe)·b, (s % spe + 1)·b) of epoch s // spe, b = B / P. spe is the same for every process
   and epoch: the rows of the G // P smallest row groups (the fewest any process can get), // b.
   The rest of each process's stream is dropped, so each example is seen at most once per epoch.

Held-out passes take process p's row groups p, p + P, ... in file order, ceil(max_p rows_p / b)
steps, padded and masked as `Loader(train=False)` describes.

Since a window's rows are served in random order, all W of its row groups stay in memory while it is
consumed; with the next window's reads overlapping the last batches of the current one,
`RowGroupBuffer` holds at most 2·W row groups (its capacity), evicting the least recently used.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from nfnet.errors import NFNetError

DEFAULT_SHUFFLE_WINDOW = 16  # row groups shuffled together (Hugging Face writes ~100-row groups of images)
_EPOCH_CACHE = 2   # epochs whose row-group assignment is kept
_WINDOW_CACHE = 4  # windows whose row permutation is kept


class StreamOrder:
    """Which examples process p reads at each step of a streamed split (module docstring)."""

    def __init__(self, sizes: np.ndarray, seed: int, process_index: int, process_count: int,
                 local_batch: int, window: int) -> None:
        sizes = np.asarray(sizes, np.int64)
        if window < 1:
            raise NFNetError(f"--shuffle-window must be >= 1 row group, got {window}")
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.seed, self.p, self.P = seed, process_index, process_count
        self.b, self.window = local_batch, window
        self.fewest_rows = int(np.sort(sizes)[: len(sizes) // process_count].sum())
        self.steps_per_epoch = self.fewest_rows // local_batch  # 0: too few rows per process (Loader says so)
        mine = np.arange(process_index, len(sizes), process_count)
        self._eval_groups = mine
        self._eval_cum = np.concatenate([[0], np.cumsum(sizes[mine])])
        most = max(int(sizes[q::process_count].sum()) for q in range(process_count))
        self.eval_steps = math.ceil(most / local_batch)
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._windows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(this process's row groups of the epoch in order, cumulative rows at each window start)."""
        if epoch not in self._epochs:
            if len(self._epochs) >= _EPOCH_CACHE:
                del self._epochs[min(self._epochs)]
            groups = np.random.default_rng([self.seed, epoch]).permutation(len(self.sizes))[self.p :: self.P]
            rows = self.sizes[groups]
            starts = np.arange(0, len(groups), self.window)
            window_rows = np.add.reduceat(rows, starts)
            self._epochs[epoch] = groups, np.concatenate([[0], np.cumsum(window_rows)])
        return self._epochs[epoch]

    def window_indices(self, epoch: int, k: int) -> np.ndarray:
        """Example indices of window k of the epoch, in the order they are served."""
        key = (epoch, k)
        if key not in self._windows:
            if len(self._windows) >= _WINDOW_CACHE:
                self._windows.popitem(last=False)
            groups = self._epoch(epoch)[0][k * self.window : (k + 1) * self.window]
            rows = np.concatenate([np.arange(self.offsets[g], self.offsets[g + 1]) for g in groups])
            self._windows[key] = rows[np.random.default_rng([self.seed, epoch, self.p, k]).permutation(len(rows))]
        self._windows.move_to_end(key)
        return self._windows[key]

    def train(self, step: int) -> tuple[np.ndarray, int]:
        """(example indices, epoch) of this process's rows of training step `step`."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        _, cum = self._epoch(epoch)
        out, q, end = [], pos * self.b, (pos + 1) * self.b
        while q < end:
            k = int(np.searchsorted(cum, q, side="right")) - 1
            take = min(end, int(cum[k + 1])) - q
            start = q - int(cum[k])
            out.append(self.window_indices(epoch, k)[start : start + take])
            q += take
        return np.concatenate(out), epoch

    def eval(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(example indices, float32 mask) of this process's rows of held-out step `step`."""
        q = step * self.b + np.arange(self.b)
        mask = q < self._eval_cum[-1]
        if not mask.any():  # a process with no rows left (or none at all) pads with example 0
            return np.zeros(self.b, np.int64), mask.astype(np.float32)
        q = np.where(mask, q, 0)
        j = np.searchsorted(self._eval_cum, q, side="right") - 1
        indices = self.offsets[self._eval_groups[j]] + q - self._eval_cum[j]
        return indices, mask.astype(np.float32)


class _Entry:
    __slots__ = ("value", "nbytes", "pins", "ready", "failed")

    def __init__(self) -> None:
        self.value: Any = None
        self.nbytes = 0
        self.pins = 1
        self.ready = False
        self.failed = False


class RowGroupBuffer:
    """At most `capacity` row groups in memory, least recently used evicted, shared by worker threads.

    `use(g, fn)` runs `fn` on row group g (read by `load(g)` when absent) while it is pinned: a
    pinned or loading row group is never evicted, and a read waits for room rather than exceed the
    capacity. A worker pins one row group at a time, so with capacity >= the number of workers no
    read waits forever. `peak_groups` / `peak_bytes` record the most held at once (loading ones
    count from the moment their slot is taken; their bytes once read), `loads` the reads.
    """

    def __init__(self, load: Callable[[int], Any], nbytes: Callable[[Any], int], capacity: int) -> None:
        self._load, self._nbytes = load, nbytes
        self.capacity = max(1, capacity)
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._cond = threading.Condition()
        self.held_bytes = self.peak_bytes = self.peak_groups = self.loads = 0

    def resize(self, capacity: int) -> None:
        with self._cond:
            self.capacity = max(1, capacity)
            while len(self._entries) > self.capacity and self._evict_one():
                pass

    def _evict_one(self) -> bool:
        for g, e in self._entries.items():
            if e.pins == 0 and e.ready:
                del self._entries[g]
                self.held_bytes -= e.nbytes
                return True
        return False

    def _acquire(self, g: int) -> tuple[_Entry, bool]:
        with self._cond:
            while True:
                e = self._entries.get(g)
                if e is not None:
                    e.pins += 1
                    self._entries.move_to_end(g)
                    return e, False
                if len(self._entries) < self.capacity or self._evict_one():
                    e = self._entries[g] = _Entry()
                    self.peak_groups = max(self.peak_groups, len(self._entries))
                    return e, True
                self._cond.wait()

    def use(self, g: int, fn: Callable[[Any], Any]) -> Any:
        while True:
            e, mine = self._acquire(g)
            if mine:
                try:
                    value = self._load(g)
                except BaseException:
                    with self._cond:
                        e.failed = True
                        del self._entries[g]
                        self._cond.notify_all()
                    raise
                with self._cond:
                    e.value, e.nbytes, e.ready = value, self._nbytes(value), True
                    self.loads += 1
                    self.held_bytes += e.nbytes
                    self.peak_bytes = max(self.peak_bytes, self.held_bytes)
                    self._cond.notify_all()
            else:
                with self._cond:
                    while not (e.ready or e.failed):
                        self._cond.wait()
                    if e.failed:
                        continue  # the reader failed; read it here and raise its error here
            try:
                return fn(e.value)
            finally:
                with self._cond:
                    e.pins -= 1
                    self._cond.notify_all()
