"""IDX files (the MNIST / Fashion-MNIST format) and the Fashion-MNIST source.

IDX: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian
uint32, then the data in big-endian row-major order. Files may be gzipped.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from nfnet.data.dataset import ArrayDataset
from nfnet.errors import NFNetError

# Type codes of the IDX format (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "NFSCALE_FASHION_MNIST_DIR"
_FASHION_PREFIX = {"train": "train", "test": "t10k"}


def parse_idx(data: bytes, where: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into an array in native byte order."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise NFNetError(f"{where} is not an IDX file (bad magic number); re-download or reinstall it")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise NFNetError(f"{where} is truncated in its IDX header; re-download or reinstall it")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) != header + count * dtype.itemsize:
        raise NFNetError(
            f"{where} holds {len(data) - header} data bytes, its header {shape} says "
            f"{count * dtype.itemsize}; re-download or reinstall it"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzipped (detected by its magic bytes) or not."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise NFNetError(f"{path} is a corrupt gzip file ({e}); re-download or reinstall it") from e
    return parse_idx(raw, str(path))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist_dir(data_dir: str | None = None) -> Path:
    """Where Fashion-MNIST is read from: `data_dir`, else $NFSCALE_FASHION_MNIST_DIR, else the Debian path."""
    return Path(data_dir or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_SYSTEM_DIR)


def load_fashion_mnist(split: str, data_dir: str | None = None) -> ArrayDataset:
    """Fashion-MNIST (60000 train / 10000 test 28x28 grayscale, 10 classes) from its IDX files."""
    directory = fashion_mnist_dir(data_dir)
    prefix = _FASHION_PREFIX[split]
    paths = {}
    for kind, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
        found = _find(directory, stem)
        if found is None:
            raise NFNetError(
                f"Fashion-MNIST file {directory / stem}[.gz] not found; install it with "
                f"`apt-get install dataset-fashion-mnist` or point --data-dir (or ${FASHION_MNIST_ENV}) "
                "at a directory holding the IDX files"
            )
        paths[kind] = found
    images = read_idx(paths["images"])
    labels = read_idx(paths["labels"])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or images.dtype != np.uint8:
        raise NFNetError(
            f"{paths['images']} ({images.dtype} {images.shape}) and {paths['labels']} ({labels.shape}) "
            "do not form an image split; re-download or reinstall them"
        )
    return ArrayDataset("fashion_mnist", images, labels.astype(np.int32), num_classes=10)
