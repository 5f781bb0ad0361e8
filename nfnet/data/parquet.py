"""Image shards in Parquet: the layout Hugging Face image datasets write, local or on `gs://`, streamed.

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

A split is always streamed (`ParquetStream`): loading reads only the shards' footers (row-group
sizes, schema, label statistics for the class count); row groups are read when the loader needs
them, at most 2 × `--shuffle-window` of them held at once, and decoded in the loader's workers.
The order they are read in is `nfnet.data.stream`'s.
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
from nfnet.data.dataset import Indices, decode_image
from nfnet.data.stream import DEFAULT_SHUFFLE_WINDOW, RowGroupBuffer, StreamOrder
from nfnet.errors import NFNetError

_SPLIT_NAMES = {"train": (("train",),), "test": (("test",), ("validation", "valid", "val"))}
_GLOB_CHARS = re.compile(r"[*?\[]")


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


def _open(fs: pafs.FileSystem, path: str, metadata: pq.FileMetaData | None = None) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(fs.open_input_file(path), metadata=metadata)
    except (pa.ArrowException, OSError) as e:
        raise NFNetError(f"Parquet shard {path} is corrupt or unreadable: {e}; re-write or remove it") from e


def _check_columns(pf: pq.ParquetFile, path: str, columns: list[str]) -> None:
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise NFNetError(
            f"Parquet shard {path} has no column(s) {missing} (it has {pf.schema_arrow.names}); "
            "pass image_column=/label_column= to name them"
        )


def _image_read_column(pf: pq.ParquetFile, path: str, name: str) -> str:
    """The column path to read for the image bytes: `image.bytes` of a struct, or `image` itself."""
    kind = pf.schema_arrow.field(name).type
    if pa.types.is_struct(kind):
        if kind.get_field_index("bytes") < 0:
            raise NFNetError(f"column {name!r} of {path} is a struct without a 'bytes' field ({kind})")
        return f"{name}.bytes"
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise NFNetError(f"column {name!r} of {path} holds {kind}, not encoded image bytes")
    return name


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


def _label_max(fs: pafs.FileSystem, pf: pq.ParquetFile, path: str, label_column: str) -> int:
    """The largest label of a shard: its row groups' statistics, else its label column read alone."""
    md = pf.metadata
    leaf = next((i for i in range(md.num_columns) if md.schema.column(i).path == label_column), None)
    tops = []
    for r in range(md.num_row_groups):
        stats = md.row_group(r).column(leaf).statistics if leaf is not None else None
        if stats is None or not stats.has_min_max or not isinstance(stats.max, int):
            try:
                table = pf.read(columns=[label_column])
            except (pa.ArrowException, OSError) as e:
                raise NFNetError(f"Parquet shard {path} is corrupt or unreadable: {e}; re-write or remove it") from e
            return int(_labels(table, path, label_column).max(initial=0))
        tops.append(stats.max)
    return max(tops, default=0)


class ParquetStream:
    """A split of Parquet shards read row group by row group, never as a whole.

    Only the shards' footers are read up front (row-group sizes, schema, label statistics). `get`
    reads the row groups its examples are in through a `RowGroupBuffer` of bounded size and decodes
    in the calling (worker) thread. The loader reads a stream in the order of `stream_order`
    (nfnet.data.stream): each process its own row groups, shuffled within windows of row groups.
    """

    def __init__(self, name: str, fs: pafs.FileSystem, shards: list[str], metadata: list[pq.FileMetaData],
                 groups: np.ndarray, sizes: np.ndarray, columns: tuple[str, str], num_classes: int) -> None:
        self.name = name
        self.num_classes = int(num_classes)
        self._fs, self._shards, self._metadata = fs, shards, metadata
        self._groups = groups  # [G, 2]: (shard, row group within shard)
        self._sizes = np.asarray(sizes, np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)])
        self._image_column, self._label_column = columns
        self.buffer = RowGroupBuffer(self._read, lambda t: t.nbytes, capacity=2 * DEFAULT_SHUFFLE_WINDOW)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def row_groups(self) -> int:
        return len(self._sizes)

    def head(self, size: int, name: str | None = None) -> ParquetStream:
        """The first `size` examples in shard order (what `--max-*-examples` takes of a stream)."""
        keep = int(np.searchsorted(self._offsets, size, side="left"))
        sizes = self._sizes[:keep].copy()
        sizes[-1] -= int(self._offsets[keep]) - size
        return ParquetStream(name or f"{self.name}[{size}]", self._fs, self._shards, self._metadata,
                             self._groups[:keep], sizes, (self._image_column, self._label_column),
                             self.num_classes)

    def stream_order(self, seed: int, process_index: int, process_count: int, local_batch: int,
                     window: int) -> StreamOrder:
        """The order the loader reads this split in; the buffer is sized to 2·window row groups."""
        self.buffer.resize(2 * window)
        return StreamOrder(self._sizes, seed, process_index, process_count, local_batch, window)

    def _read(self, g: int) -> pa.Table:
        s, r = (int(v) for v in self._groups[g])
        path = self._shards[s]
        pf = _open(self._fs, path, self._metadata[s])
        try:
            table = pf.read_row_group(r, columns=[self._image_column, self._label_column])
        except (pa.ArrowException, OSError) as e:
            raise NFNetError(f"Parquet shard {path} is corrupt or unreadable: {e}; re-write or remove it") from e
        return table.slice(0, int(self._sizes[g]))

    def _where(self, g: int, row: int) -> str:
        return f"at row {row} of Parquet shard {self._shards[int(self._groups[g][0])]}"

    def _rows(self, g: int, rows: np.ndarray) -> tuple[list[bytes | None], np.ndarray]:
        def take(table: pa.Table) -> tuple[list[bytes | None], np.ndarray]:
            image = table.column(0).combine_chunks()
            if pa.types.is_struct(image.type):
                image = image.field(0)
            path = self._shards[int(self._groups[g][0])]
            labels = _labels(table.select([1]), path, table.column_names[1])[rows]
            if labels.size and labels.max() >= self.num_classes:
                raise NFNetError(f"labels of {path} reach {labels.max()} but num_classes is {self.num_classes}")
            return [image[int(i)].as_py() for i in rows], labels

        return self.buffer.use(g, take)

    def get(self, indices: Indices) -> tuple[list[np.ndarray], np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        groups = np.searchsorted(self._offsets, idx, side="right") - 1
        images: list[np.ndarray | None] = [None] * len(idx)
        labels = np.empty(len(idx), np.int32)
        for g in np.unique(groups):
            at = np.flatnonzero(groups == g)
            rows = idx[at] - self._offsets[g]
            data, lab = self._rows(int(g), rows)
            labels[at] = lab
            for j, row, value in zip(at, rows, data):
                if value is None:
                    raise NFNetError(f"row {row} of Parquet shard {self._shards[int(self._groups[g][0])]} "
                                     "has no image bytes; embed the images")
                images[j] = decode_image(value, self._where(int(g), int(row)))
        return images, labels  # type: ignore[return-value]


def load_parquet(
    uri: str,
    split: str,
    image_column: str = "image",
    label_column: str = "label",
    num_classes: int | None = None,
) -> ParquetStream:
    """The `split` of the Parquet shards at `uri`; num_classes from the argument, HF metadata, or max label + 1."""
    fs, path = storage.filesystem(uri)
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

    metadata, groups, sizes = [], [], []
    read_columns: tuple[str, str] | None = None
    metadata_classes, top = None, -1
    for s, shard in enumerate(chosen):
        pf = _open(fs, shard)
        _check_columns(pf, shard, [image_column, label_column])
        image = _image_read_column(pf, shard, image_column)
        read_columns = read_columns or (image, label_column)
        if image != read_columns[0]:
            raise NFNetError(f"column {image_column!r} of {shard} is stored unlike the split's first shard's")
        metadata.append(pf.metadata)
        for r in range(pf.metadata.num_row_groups):
            if pf.metadata.row_group(r).num_rows:
                groups.append((s, r))
                sizes.append(pf.metadata.row_group(r).num_rows)
        metadata_classes = metadata_classes or _class_names(pf, label_column)
        top = max(top, _label_max(fs, pf, shard, label_column))
    if not sizes:
        raise NFNetError(f"the {split!r} shards at {uri} hold no rows")
    if num_classes is None:
        num_classes = metadata_classes
    if num_classes is None:
        # Max over every split, so train and test agree on the head size.
        for shard in sorted(set(shards) - set(chosen)):
            pf = _open(fs, shard)
            if label_column in pf.schema_arrow.names:
                top = max(top, _label_max(fs, pf, shard, label_column))
        num_classes = top + 1
    if top >= num_classes:
        raise NFNetError(f"labels at {uri} reach {top} but num_classes is {num_classes}")
    return ParquetStream(f"parquet:{uri}", fs, chosen, metadata, np.array(groups, np.int64).reshape(-1, 2),
                         np.array(sizes, np.int64), read_columns, num_classes)
