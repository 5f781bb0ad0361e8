"""The `Dataset` protocol and its two shapes: decoded arrays in memory, encoded bytes decoded lazily."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from nfnet.errors import NFNetError

Indices = Sequence[int] | np.ndarray


@runtime_checkable
class Dataset(Protocol):
    """A labelled image split with random access.

    `get` returns uint8 images HxWxC (C is 1 or 3) and int32 labels. In-memory sources return one
    stacked array; encoded sources return a list whose images may differ in size.
    """

    name: str
    num_classes: int

    def __len__(self) -> int: ...

    def get(self, indices: Indices) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]: ...


class ArrayDataset:
    """A split held as one uint8 array [N, H, W, C] plus int32 labels (IDX, digits, synthetic)."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be uint8 [N, H, W, 1|3], got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.name = name
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int32)
        self.num_classes = int(num_classes)

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: Indices) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        return self.images[idx], self.labels[idx]


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode PNG/JPEG/... bytes to uint8 HxWxC with C=1 (grayscale) or C=3 (everything else)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != "L":
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise NFNetError(f"cannot decode image {where}: {e}; the file is corrupt or not an image") from e
    return arr[..., None] if arr.ndim == 2 else arr


class EncodedDataset:
    """A split of encoded images (Parquet shards, image folders), decoded on `get`.

    `fetch(i)` returns the encoded bytes of example i and `describe(i)` where it came from, so a
    bad image is reported by shard/file. Decoding runs in the loader's worker threads.
    """

    def __init__(
        self,
        name: str,
        labels: np.ndarray,
        num_classes: int,
        fetch: Callable[[int], bytes],
        describe: Callable[[int], str],
    ) -> None:
        self.name = name
        self.labels = np.asarray(labels, dtype=np.int32)
        self.num_classes = int(num_classes)
        self._fetch = fetch
        self._describe = describe

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: Indices) -> tuple[list[np.ndarray], np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        images = [decode_image(self._fetch(int(i)), self._describe(int(i))) for i in idx]
        return images, self.labels[idx]
