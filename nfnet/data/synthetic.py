"""A procedural image source of any size and class count, for throughput work and quick tests.

Each class is a sinusoidal grating with its own orientation, frequency and colour (drawn from
`seed` alone, so train and test share them); each example adds a random phase, contrast and
pixel noise (drawn from `seed` and the split). A small convnet learns it in a few hundred steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nfnet.data.dataset import ArrayDataset
from nfnet.errors import NFNetError

_SPLIT_ID = {"train": 0, "test": 1}
_CHUNK = 1024


@dataclass(frozen=True)
class SyntheticConfig:
    n: int = 8192
    n_test: int | None = None  # default n // 4
    classes: int = 10
    size: int = 32
    channels: int = 3
    seed: int = 0

    def spec(self) -> str:
        return (
            f"synthetic:n={self.n},n_test={self.test_size},classes={self.classes},"
            f"size={self.size},channels={self.channels},seed={self.seed}"
        )

    @property
    def test_size(self) -> int:
        return self.n // 4 if self.n_test is None else self.n_test


def synthetic_config(params: dict[str, int]) -> SyntheticConfig:
    known = set(SyntheticConfig.__dataclass_fields__)
    unknown = set(params) - known
    if unknown:
        raise NFNetError(f"unknown synthetic parameter(s) {sorted(unknown)}; known: {sorted(known)}")
    cfg = SyntheticConfig(**params)
    if cfg.n < 1 or cfg.test_size < 1 or cfg.classes < 2 or cfg.size < 4 or cfg.channels not in (1, 3):
        raise NFNetError(
            f"bad synthetic parameters {cfg}; need n>=1, n_test>=1, classes>=2, size>=4, channels 1 or 3"
        )
    return cfg


def load_synthetic(split: str, cfg: SyntheticConfig) -> ArrayDataset:
    n = cfg.n if split == "train" else cfg.test_size
    class_rng = np.random.default_rng([cfg.seed, 7])
    theta = class_rng.permutation(cfg.classes) * (np.pi / cfg.classes)
    freq = class_rng.uniform(1.5, 4.5, cfg.classes)
    colour = class_rng.uniform(0.3, 1.0, (cfg.classes, cfg.channels))

    rng = np.random.default_rng([cfg.seed, _SPLIT_ID[split]])
    labels = rng.permutation(np.arange(n) % cfg.classes).astype(np.int32)
    coords = np.arange(cfg.size, dtype=np.float32) / cfg.size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    images = np.empty((n, cfg.size, cfg.size, cfg.channels), np.uint8)
    for lo in range(0, n, _CHUNK):
        c = labels[lo : lo + _CHUNK]
        m = len(c)
        phase = rng.uniform(0, 2 * np.pi, m).astype(np.float32)
        contrast = rng.uniform(60, 100, m).astype(np.float32)
        proj = xx * np.cos(theta[c])[:, None, None] + yy * np.sin(theta[c])[:, None, None]
        wave = np.cos(2 * np.pi * freq[c][:, None, None] * proj + phase[:, None, None]).astype(np.float32)
        img = 128 + (contrast[:, None, None] * wave)[..., None] * colour[c][:, None, None, :]
        img += rng.normal(0, 20, img.shape).astype(np.float32)
        images[lo : lo + m] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return ArrayDataset(cfg.spec(), images, labels, num_classes=cfg.classes)
