"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes) with a fixed split."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits as _sklearn_digits
from sklearn.model_selection import train_test_split

from nfnet.data.dataset import ArrayDataset

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits(split: str) -> ArrayDataset:
    """A stratified 80/20 split (1437 train / 360 test) fixed by `SPLIT_SEED`; pixels 0..16 -> 0..255."""
    bunch = _sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    return ArrayDataset("digits", images[idx], labels[idx], num_classes=10)
