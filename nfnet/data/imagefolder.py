"""Image folders: `<dir>/<split>/<class_name>/*.png|jpg|...`, classes numbered in sorted name order.

The class list is the sorted union of class directories across the train and held-out folders, so
both splits agree on label ids. The held-out folder is `test`, or `validation`/`valid`/`val` when
there is no `test`. Local paths only; files are read and decoded on `get`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfnet.data.dataset import EncodedDataset
from nfnet.errors import NFNetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_FOLDERS = {"train": ("train",), "test": ("test", "validation", "valid", "val")}


def _split_dir(root: Path, split: str) -> Path | None:
    return next((root / n for n in _FOLDERS[split] if (root / n).is_dir()), None)


def load_imagefolder(directory: str, split: str) -> EncodedDataset:
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise NFNetError(f"image folder {root} not found; give a directory holding train/ and test/")
    split_dir = _split_dir(root, split)
    if split_dir is None:
        raise NFNetError(
            f"image folder {root} has no {'/'.join(_FOLDERS[split])} subdirectory; "
            f"lay it out as {root}/<split>/<class_name>/<image>.png"
        )
    split_dirs = [d for d in (_split_dir(root, s) for s in _FOLDERS) if d is not None]
    classes = sorted({c.name for d in split_dirs for c in d.iterdir() if c.is_dir()})
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if class_dir.is_dir():
            found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [label] * len(found)
    if not files:
        raise NFNetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {split_dir}/<class_name>/")

    def fetch(i: int) -> bytes:
        try:
            return files[i].read_bytes()
        except OSError as e:
            raise NFNetError(f"cannot read image {files[i]}: {e}") from e

    return EncodedDataset(
        f"imagefolder:{directory}", np.asarray(labels, np.int32), len(classes), fetch, lambda i: str(files[i])
    )
