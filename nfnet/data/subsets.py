"""A dataset cut to the `max_train_examples` / `max_eval_examples` of a run: `subset(ds, size)`.

A dataset with random access becomes a `Subset`: a fixed random subset drawn with
`SUBSET_SEED`, not the run's seed, so runs that differ in `seed` still train and
evaluate on the same examples, kept in the original order. A streamed split (one with
a `head` method) keeps its first `size` rows instead: random rows of a stream would
read a row group per example.
"""

from __future__ import annotations

import numpy as np

from nfnet.data.dataset import Dataset

# Subsets (max_*_examples) are drawn with this fixed seed, so runs that differ in
# `seed` still train and evaluate on the same examples.
SUBSET_SEED = 0


class Subset:
    """A fixed random subset of a dataset (the `max_*_examples` options), in the original order."""

    def __init__(self, ds: Dataset, size: int, seed: int = SUBSET_SEED) -> None:
        self.ds = ds
        self.indices = np.sort(np.random.default_rng(seed).permutation(len(ds))[:size])
        self.name = f"{ds.name}[{size}]"
        self.num_classes = ds.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, indices):
        return self.ds.get(self.indices[np.asarray(indices, dtype=np.int64)])


def subset(ds: Dataset, size: int | None) -> Dataset:
    """`ds` cut to `size` examples: a fixed random subset, or a streamed split's first `size` rows."""
    if size is None or size >= len(ds):
        return ds
    head = getattr(ds, "head", None)  # random rows of a stream would read a row group per example
    return head(size) if head is not None else Subset(ds, size)
