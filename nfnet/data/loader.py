"""The deterministic, resumable, multi-host batch loader.

Order (docs/architecture.md): epoch e visits the examples in `epoch_permutation(seed, e, n)`;
step s is epoch s // spe, positions [(s % spe)·B, (s % spe + 1)·B) with spe = n // B (the
remainder of each epoch is dropped). Process p of P takes rows [p·B/P, (p+1)·B/P) of every
global batch. Augmentation randomness is keyed by (seed, epoch, example index), so the batch of
step s depends on nothing but (dataset, seed, s): starting at `start_step` yields exactly the
batches an uninterrupted run yields from there on.

A streamed split (one with `stream_order`: Parquet) is read in `nfnet.data.stream`'s order instead:
a seeded row-group permutation per epoch, each process its own row groups, rows shuffled within
windows of `shuffle_window` row groups; the batch of step s is again a pure function of
(dataset, seed, s, process_count, shuffle_window).

Decoding and augmentation run in a thread pool (Pillow and numpy release the GIL; threads avoid
pickling the dataset and forking a process that has JAX loaded), at most `prefetch` batches ahead.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from nfnet.data.dataset import Dataset
from nfnet.data.stream import DEFAULT_SHUFFLE_WINDOW, StreamOrder
from nfnet.data.transforms import crop_resize, eval_boxes, example_uniforms, to_rgb, train_boxes
from nfnet.errors import NFNetError

_PERM_CACHE = 2  # epochs whose permutation is kept (the current one and the next)


def steps_per_epoch(n: int, batch: int) -> int:
    """Full batches per epoch (the remainder is dropped)."""
    if batch < 1:
        raise NFNetError(f"batch size must be >= 1, got {batch}")
    if n < batch:
        raise NFNetError(f"the dataset has {n} examples, fewer than one batch of {batch}; lower the batch size")
    return n // batch


def total_steps(n: int, batch: int, epochs: float) -> int:
    """Steps in a budget of `epochs` passes over n examples (fractional budgets allowed): ceil(epochs·n/B), >= 1."""
    if not epochs > 0:
        raise NFNetError(f"epochs must be > 0, got {epochs}")
    steps_per_epoch(n, batch)
    return max(1, math.ceil(epochs * n / batch))


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """perm(seed, e): the order of epoch e, numpy's PCG64 seeded with SeedSequence([seed, e])."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _shapes(images: np.ndarray | list[np.ndarray]) -> np.ndarray:
    if isinstance(images, np.ndarray):
        return np.tile(np.array(images.shape[1:3]), (len(images), 1))
    return np.array([im.shape[:2] for im in images]).reshape(-1, 2)


class Loader:
    """Iterates `(step, (x, y))` for training, or `(step, (x, y, mask))` over one pass for eval.

    x: uint8 [global_batch_size / process_count, R, R, 3] (grey replicated), not yet normalised:
    the train and eval steps normalise on the device (`transforms.normalise_on_device`), so a
    batch crosses to the device in a quarter of float32's bytes; y: int32.
    train=True: steps `start_step, start_step + 1, ...` up to `num_steps` (exclusive; forever when
    None), in the order described in the module docstring, augmented.
    train=False: the whole split once in dataset order, no augmentation, ceil(n / B) steps; the
    last global batch is padded with repeats of example 0 and `mask` (float32, 1 real / 0 padding)
    marks the real rows, so summing metric·mask over all batches and processes counts every
    example exactly once. `start_step` / `num_steps` select a range of these batches. A streamed
    split's pass takes each process's own row groups in file order instead (`StreamOrder.eval`),
    ceil(max rows of a process / local batch) steps, padded and masked the same way.
    Use as a context manager, or call `close()`, to stop the worker threads early.
    """

    def __init__(
        self,
        ds: Dataset,
        global_batch_size: int,
        resolution: int,
        train: bool = True,
        seed: int = 0,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        num_workers: int = 2,
        prefetch: int = 4,
        num_steps: int | None = None,
        shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
    ) -> None:
        if global_batch_size < 1 or resolution < 1:
            raise NFNetError(f"batch size and resolution must be >= 1, got {global_batch_size} and {resolution}")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise NFNetError(f"process_index {process_index} is not in [0, process_count={process_count})")
        if global_batch_size % process_count:
            raise NFNetError(
                f"global batch size {global_batch_size} is not divisible by the {process_count} processes; "
                "choose a multiple"
            )
        if num_workers < 0 or prefetch < 1 or start_step < 0:
            raise NFNetError(
                f"need num_workers >= 0, prefetch >= 1, start_step >= 0; got {num_workers}, {prefetch}, {start_step}"
            )
        self.ds = ds
        self.n = len(ds)
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.resolution = resolution
        self.train = train
        self.seed = seed
        self.start_step = start_step
        self.process_index = process_index
        self.process_count = process_count
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.num_steps = num_steps
        order_of = getattr(ds, "stream_order", None)
        self.order: StreamOrder | None = None
        if order_of is not None:
            self.order = order_of(seed, process_index, process_count, self.local_batch_size, shuffle_window)
        if train:
            self.steps_per_epoch = steps_per_epoch(self.n, global_batch_size)
            if self.order is not None:
                self.steps_per_epoch = self.order.steps_per_epoch
                if self.steps_per_epoch < 1:
                    raise NFNetError(
                        f"each of the {process_count} processes may get only {self.order.fewest_rows} rows of "
                        f"{ds.name} per epoch (its own row groups), fewer than one local batch of "
                        f"{self.local_batch_size}; lower the batch size or write smaller row groups"
                    )
            self._stop = num_steps
        else:
            if self.n == 0:
                raise NFNetError(f"dataset {ds.name} is empty")
            self.steps_per_epoch = math.ceil(self.n / global_batch_size)
            if self.order is not None:
                self.steps_per_epoch = self.order.eval_steps
            self._stop = self.steps_per_epoch if num_steps is None else min(num_steps, self.steps_per_epoch)
        self._perms: dict[int, np.ndarray] = {}
        self._iterators: weakref.WeakSet[Generator[Any, None, None]] = weakref.WeakSet()

    def __len__(self) -> int:
        if self._stop is None:
            raise TypeError("an endless training Loader has no length; pass num_steps")
        return max(0, self._stop - self.start_step)

    def __iter__(self) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
        it = self._iterate()
        self._iterators.add(it)
        return it

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every iterator of this loader and shut its worker threads down."""
        for it in list(self._iterators):
            it.close()

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= _PERM_CACHE:
                del self._perms[min(self._perms)]
            self._perms[epoch] = epoch_permutation(self.seed, epoch, self.n)
        return self._perms[epoch]

    def work(self, step: int) -> tuple[np.ndarray, int, np.ndarray | None]:
        """(example indices, epoch, padding mask or None) of this process's rows of `step`."""
        if self.order is not None:
            if self.train:
                indices, epoch = self.order.train(step)
                return indices, epoch, None
            indices, mask = self.order.eval(step)
            return indices, 0, mask
        lo = self.process_index * self.local_batch_size
        if self.train:
            epoch, pos = divmod(step, self.steps_per_epoch)
            start = pos * self.global_batch_size + lo
            return self._permutation(epoch)[start : start + self.local_batch_size], epoch, None
        positions = step * self.global_batch_size + lo + np.arange(self.local_batch_size)
        mask = positions < self.n
        return np.where(mask, positions, 0), 0, mask.astype(np.float32)

    def produce(self, indices: np.ndarray, epoch: int, mask: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """Read and transform one batch to uint8 RGB (runs in a worker thread)."""
        images, labels = self.ds.get(indices)
        shapes = _shapes(images)
        if self.train:
            boxes, flips = train_boxes(shapes, example_uniforms(self.seed, epoch, indices, 5))
        else:
            boxes, flips = eval_boxes(shapes, self.resolution), None
        x = to_rgb(crop_resize(images, boxes, flips, self.resolution))
        y = np.asarray(labels, np.int32)
        return (x, y) if mask is None else (x, y, mask)

    def _iterate(self) -> Generator[tuple[int, tuple[np.ndarray, ...]], None, None]:
        steps = itertools.count(self.start_step) if self._stop is None else iter(range(self.start_step, self._stop))
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="nfnet-data") if self.num_workers else None
        pending: deque[tuple[int, Future | Callable[[], tuple[np.ndarray, ...]]]] = deque()

        def submit() -> bool:
            step = next(steps, None)
            if step is None:
                return False
            work = self.work(step)
            pending.append((step, pool.submit(self.produce, *work) if pool else lambda: self.produce(*work)))
            return True

        try:
            while len(pending) < self.prefetch and submit():
                pass
            while pending:
                step, job = pending.popleft()
                batch = job.result() if isinstance(job, Future) else job()
                submit()
                yield step, batch
        finally:
            for _, job in pending:
                if isinstance(job, Future):
                    job.cancel()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def eval_batches(
    ds: Dataset,
    batch_size: int,
    resolution: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 2,
    prefetch: int = 4,
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One pass over `ds` as (x, y, mask) with the last batch padded; see `Loader(train=False)`."""
    loader = Loader(
        ds, batch_size, resolution, train=False, process_index=process_index,
        process_count=process_count, num_workers=num_workers, prefetch=prefetch,
        shuffle_window=shuffle_window,
    )
    return _batches_of(loader)


def _batches_of(loader: Loader) -> Generator[tuple[np.ndarray, ...], None, None]:
    with loader:
        for _, batch in loader:
            yield batch
