"""Image shards in Parquet: the layout Hugging Face image datasets write, local or on `gs://`.

Columns: `image` (a struct {bytes, path} as `datasets.Image` writes it, or plain binary) and
`label` (int). Shards are found under the root (a directory, one file, or a glob) and assigned to
a split by name: a shard belongs to split S when any part of its path below the root starts with
S followed by `-`, `_`, `.`, a digit or nothing — `data/train-00000-of-00002.parquet`,
`train/part-0.parquet`, `test.parquet`. For a glob or a single file the path is taken from the
directory that holds the pattern or the file, that directory's name included (so
`/x/train/*.parquet` is a train split). The held-out split is `test`, or `validation`/`valid`/`val`
when the root has no `test` shards. Files are opened through pyarrow's filesystems
(`nfnet.storage.filesystem`), so `gs://bucket/path` reads through `GcsFileSystem`, or the GCS
emulator named by $STORAGE_EMULATOR_HOST.

The encoded bytes of a split are held in memory (pyarrow buffers) and decoded on `get`, in the
loader's workers; a split's encoded bytes must therefore fit in host memory.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nfnet import storage
from nfnet.data.dataset import EncodedDataset
from nfnet.errors import NFNetError

_SPLIT_NAMES = {"train": (("train",),), "test": (("test",), ("validation", "valid", "val"))}
_GLOB_CHARS = re.compile(r"[*?\[]")


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    return storage.filesystem(uri)


def _list_shards(fs: pafs.FileSystem, path: str, uri: str) -> tuple[str, list[str]]:
    """(root, shard paths) for a directory, a single file or a glob."""
    if _GLOB_CHARS.search(path):
        parts = path.split("/")
        first_glob = next(i for i, p in enumerate(parts) if _GLOB_CHARS.search(p))
        base = "/".join(parts[:first_glob]) or "/"
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except (pa.ArrowException, OSError) as e:
            raise NFNetError(f"cannot list {base}: {e}") from e
        return posixpath.dirname(base), sorted(i.path for i in infos if i.is_file and fnmatch.fnmatchcase(i.path, path))
    try:
        info = fs.get_file_info(path)
    except (pa.ArrowException, OSError) as e:
        raise NFNetError(f"cannot read {uri}: {e}") from e
    if info.type == pafs.FileType.File:
        return posixpath.dirname(posixpath.dirname(path)), [path]
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        return path, sorted(i.path for i in infos if i.is_file and i.path.endswith(".parquet"))
    raise NFNetError(storage.uri_problem(uri)
                     or f"Parquet dataset {uri} not found; give a directory, file or glob of .parquet shards")


def _in_split(relative: str, names: tuple[str, ...]) -> bool:
    pattern = re.compile(rf"^(?:{'|'.join(names)})(?:[-_.0-9]|$)")
    return any(pattern.match(part) for part in relative.split("/"))


def split_shards(root: str, shards: list[str], split: str) -> list[str]:
    """The shards of `split` among `shards` (see the module docstring for the naming rule)."""
    for names in _SPLIT_NAMES[split]:
        chosen = [s for s in shards if _in_split(posixpath.relpath(s, root), names)]
        if chosen:
            return chosen
    return []


def _open(fs: pafs.FileSystem, path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except (pa.ArrowException, OSError) as e:
        raise NFNetError(f"Parquet shard {path} is corrupt or unreadable: {e}; re-write or remove it") from e


def _read(pf: pq.ParquetFile, path: str, columns: list[str]) -> pa.Table:
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise NFNetError(
            f"Parquet shard {path} has no column(s) {missing} (it has {pf.schema_arrow.names}); "
            "pass image_column=/label_column= to name them"
        )
    try:
        return pf.read(columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise NFNetError(f"Parquet shard {path} is corrupt or unreadable: {e}; re-write or remove it") from e


def _image_bytes(column: pa.ChunkedArray, path: str, name: str) -> pa.Array:
    arr = column.combine_chunks()
    if pa.types.is_struct(arr.type):
        if arr.type.get_field_index("bytes") < 0:
            raise NFNetError(f"column {name!r} of {path} is a struct without a 'bytes' field ({arr.type})")
        arr = arr.field("bytes")
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        raise NFNetError(f"column {name!r} of {path} holds {arr.type}, not encoded image bytes")
    return arr


def _labels(table: pa.Table, path: str, name: str) -> np.ndarray:
    col = table.column(name)
    if not pa.types.is_integer(col.type) or col.null_count:
        raise NFNetError(f"column {name!r} of {path} must be non-null integers, got {col.type}")
    labels = col.to_numpy().astype(np.int64)
    if labels.size and labels.min() < 0:
        raise NFNetError(f"{path} has negative labels (unlabelled split?); use a labelled split")
    return labels


def _class_names(pf: pq.ParquetFile, label_column: str) -> int | None:
    """The number of ClassLabel names in Hugging Face's schema metadata, if it is there."""
    meta = (pf.schema_arrow.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        feature = json.loads(meta)["info"]["features"][label_column]
        return len(feature["names"]) if feature.get("_type") == "ClassLabel" else None
    except (ValueError, KeyError, TypeError):
        return None


def load_parquet(
    uri: str,
    split: str,
    image_column: str = "image",
    label_column: str = "label",
    num_classes: int | None = None,
) -> EncodedDataset:
    """The `split` of the Parquet shards at `uri`; num_classes from the argument, HF metadata, or max label + 1."""
    fs, path = _filesystem(uri)
    root, shards = _list_shards(fs, path, uri)
    if not shards:
        raise NFNetError(f"no .parquet shards found at {uri}")
    chosen = split_shards(root, shards, split)
    if not chosen:
        names = "/".join(n for group in _SPLIT_NAMES[split] for n in group)
        raise NFNetError(
            f"no {split!r} shards at {uri} (found {len(shards)}, e.g. {shards[0]}); name them "
            f"{names}-NNNNN-of-NNNNN.parquet or put them in a {_SPLIT_NAMES[split][0][0]}/ directory"
        )

    images: list[pa.Array] = []
    labels: list[np.ndarray] = []
    metadata_classes = None
    for shard in chosen:
        pf = _open(fs, shard)
        table = _read(pf, shard, [image_column, label_column])
        images.append(_image_bytes(table.column(image_column), shard, image_column))
        labels.append(_labels(table, shard, label_column))
        metadata_classes = metadata_classes or _class_names(pf, label_column)

    all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if len(all_labels) == 0:
        raise NFNetError(f"the {split!r} shards at {uri} hold no rows")
    if num_classes is None:
        num_classes = metadata_classes
    if num_classes is None:
        # Max over every split, so train and test agree on the head size.
        top = int(all_labels.max())
        for shard in sorted(set(shards) - set(chosen)):
            pf = _open(fs, shard)
            if label_column in pf.schema_arrow.names:
                other = _labels(_read(pf, shard, [label_column]), shard, label_column)
                top = max(top, int(other.max(initial=0)))
        num_classes = top + 1
    if all_labels.max() >= num_classes:
        raise NFNetError(f"labels at {uri} reach {all_labels.max()} but num_classes is {num_classes}")

    offsets = np.cumsum([0] + [len(a) for a in images])

    def locate(i: int) -> tuple[int, int]:
        s = int(np.searchsorted(offsets, i, side="right")) - 1
        return s, i - int(offsets[s])

    def fetch(i: int) -> bytes:
        s, row = locate(i)
        value = images[s][row].as_py()
        if value is None:
            raise NFNetError(f"row {row} of Parquet shard {chosen[s]} has no image bytes; embed the images")
        return value

    def describe(i: int) -> str:
        s, row = locate(i)
        return f"at row {row} of Parquet shard {chosen[s]}"

    return EncodedDataset(f"parquet:{uri}", all_labels.astype(np.int32), num_classes, fetch, describe)
