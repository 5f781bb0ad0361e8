"""Streamed Parquet splits: row-group order, exact resume, bounded memory, one reader per row group."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nfnet.data import Loader, eval_batches, load_dataset
from nfnet.data.parquet import ParquetStream
from nfnet.data.stream import RowGroupBuffer, StreamOrder
from nfnet.errors import NFNetError


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_indexed(root: Path, n: int, shards: int, row_group_size: int, size: int = 8, split: str = "train",
                  noise: bool = False) -> None:
    """n examples over `shards` shards; example i has label i (so a batch says which examples it holds)."""
    rng = np.random.default_rng(0)
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for s in range(shards):
        rows = range(bounds[s], bounds[s + 1])
        images = [rng.integers(0, 256, (size, size), dtype=np.uint8) if noise
                  else np.full((size, size), i % 256, np.uint8) for i in rows]
        table = pa.table({
            "image": pa.array([{"bytes": png(im), "path": f"{i}.png"} for i, im in zip(rows, images)],
                              pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "label": pa.array(list(rows), pa.int64()),
        })
        root.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"{split}-{s:05d}-of-{shards:05d}.parquet", row_group_size=row_group_size)


def collect(loader: Loader) -> dict[int, tuple[np.ndarray, ...]]:
    with loader:
        return {step: batch for step, batch in loader}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    """300 train examples in 3 shards of 7-row groups (the last of each shard shorter), 40 test."""
    root = tmp_path_factory.mktemp("stream")
    write_indexed(root, 300, shards=3, row_group_size=7, noise=True)
    write_indexed(root, 40, shards=2, row_group_size=6, split="test")
    return root


def test_a_split_is_streamed_from_its_footers(indexed):
    ds = load_dataset(f"parquet:{indexed}", "train")
    assert isinstance(ds, ParquetStream) and len(ds) == 300 and ds.num_classes == 300
    assert ds.row_groups == 3 * 15  # 100 rows per shard: 14 groups of 7 and one of 2
    assert ds.buffer.loads == 0  # nothing but footers read
    images, labels = ds.get([5, 150, 299])
    assert labels.tolist() == [5, 150, 299] and images[0].shape == (8, 8, 1)
    assert ds.buffer.loads == 3


def test_resume_at_any_step_sees_exactly_the_uninterrupted_batches(indexed):
    ds = load_dataset(f"parquet:{indexed}", "train")
    kw = dict(train=True, seed=4, num_steps=40, shuffle_window=3, num_workers=2)
    full = collect(Loader(ds, 16, 8, **kw))  # spe = 18: three epochs
    for start in (5, 18, 29):  # mid-epoch, on an epoch boundary, in a later epoch
        again = load_dataset(f"parquet:{indexed}", "train")  # a restarted process: a fresh stream
        resumed = collect(Loader(again, 16, 8, start_step=start, **kw))
        assert list(resumed) == list(range(start, 40))
        for s in resumed:
            np.testing.assert_array_equal(resumed[s][1], full[s][1])
            np.testing.assert_array_equal(resumed[s][0], full[s][0])  # pixels: augmentation included


def test_each_example_at_most_once_per_epoch_and_epochs_differ(indexed):
    ds = load_dataset(f"parquet:{indexed}", "train")
    loader = Loader(ds, 16, 8, train=True, seed=1, num_steps=36, shuffle_window=4)
    spe = loader.steps_per_epoch
    assert spe == (14 * 3 * 7 + 3 * 2) // 16  # one process: every row group, all 300 rows
    batches = collect(loader)
    epochs = [np.concatenate([batches[e * spe + k][1] for k in range(spe)]) for e in range(2)]
    for seen in epochs:
        assert len(seen) == len(set(seen.tolist())) == spe * 16
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(np.sort(epochs[0][:64]), np.arange(64))  # not file order
    other_seed = collect(Loader(ds, 16, 8, train=True, seed=2, num_steps=2, shuffle_window=4))
    assert not np.array_equal(other_seed[0][1], batches[0][1])


def test_rows_are_shuffled_within_a_window_of_row_groups():
    sizes = np.full(20, 10)
    order = StreamOrder(sizes, seed=0, process_index=0, process_count=1, local_batch=10, window=4)
    groups = order._epoch(0)[0]
    window = order.window_indices(0, 0)
    assert sorted(set(window // 10)) == sorted(groups[:4].tolist())  # window 0 = the first 4 row groups
    first = order.train(0)[0]
    assert len(set((first // 10).tolist())) > 1  # one batch mixes several row groups
    assert np.array_equal(np.concatenate([order.train(s)[0] for s in range(4)]), window)


@pytest.mark.parametrize("processes", [2, 3])
def test_processes_read_only_their_own_row_groups_and_together_see_each_example_once(indexed, processes):
    batch, seen, read = 12, [], []
    spe = None
    for p in range(processes):
        ds = load_dataset(f"parquet:{indexed}", "train")
        groups: set[int] = set()
        load = ds.buffer._load
        ds.buffer._load = lambda g, load=load, groups=groups: (groups.add(g), load(g))[1]
        loader = Loader(ds, batch, 8, train=True, seed=7, process_index=p, process_count=processes,
                        shuffle_window=2)
        spe = loader.steps_per_epoch if spe is None else spe
        assert loader.steps_per_epoch == spe  # every process runs the same number of steps
        batches = collect(Loader(ds, batch, 8, train=True, seed=7, process_index=p, process_count=processes,
                                 shuffle_window=2, num_steps=spe))
        assert all(b[1].shape == (batch // processes,) for b in batches.values())
        seen.append(np.concatenate([b[1] for b in batches.values()]))
        read.append(groups)
        mine = np.random.default_rng([7, 0]).permutation(ds.row_groups)[p::processes]
        assert groups <= set(mine.tolist())  # epoch 0: this process's row groups, nobody else's
    for a in range(processes):
        for b in range(a + 1, processes):
            assert not read[a] & read[b]
    everything = np.concatenate(seen)
    assert len(everything) == len(set(everything.tolist())) == spe * batch
    # Dropped: at most each process's rows beyond the fewest any process gets, plus a part batch.
    assert 300 - len(everything) < processes * (7 + batch)


def test_held_out_pass_covers_each_example_once_over_processes(indexed):
    for processes in (1, 2, 4):
        labels, steps = [], set()
        for p in range(processes):
            ds = load_dataset(f"parquet:{indexed}", "test")
            batches = list(eval_batches(ds, 8, 8, process_index=p, process_count=processes))
            steps.add(len(batches))
            labels += [y[m > 0] for _, y, m in batches]
        assert len(steps) == 1  # same number of steps on every process
        assert sorted(np.concatenate(labels).tolist()) == list(range(40))


@pytest.mark.parametrize("window", [8, 3])
def test_memory_is_bounded_by_the_window_not_the_split(tmp_path, window):
    write_indexed(tmp_path, 1200, shards=4, row_group_size=10, noise=True)  # 120 row groups of 10 rows
    ds = load_dataset(f"parquet:{tmp_path}", "train")
    group_bytes = max(ds._read(g).nbytes for g in range(ds.row_groups))
    split_bytes = sum(ds._read(g).nbytes for g in range(ds.row_groups))
    with Loader(ds, 20, 8, train=True, seed=0, num_steps=2 * 60, shuffle_window=window, num_workers=2,
                prefetch=4) as loader:
        for _ in loader:
            assert len(ds.buffer._entries) <= 2 * window
    assert ds.buffer.peak_groups <= 2 * window
    assert ds.buffer.peak_bytes <= 2 * window * group_bytes < split_bytes / 7
    if window * 10 >= 4 * 20:  # a window holds the prefetched batches: each row group read once an epoch
        assert ds.buffer.loads == 2 * 120
    else:  # the prefetched batches span more than two windows: some row groups are read again
        assert 2 * 120 <= ds.buffer.loads


def test_buffer_waits_for_room_rather_than_exceed_its_capacity():
    import threading

    held, peak, lock = [0], [0], threading.Lock()

    def load(g):
        with lock:
            held[0] += 1
            peak[0] = max(peak[0], held[0])
        return g

    buffer = RowGroupBuffer(load, lambda v: 1, capacity=2)
    threads = [threading.Thread(target=lambda k=k: [buffer.use((k + i) % 7, lambda v: v) for i in range(50)])
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert buffer.peak_groups <= 2 and len(buffer._entries) <= 2


def test_head_takes_the_first_rows_and_errors_are_one_line(indexed):
    ds = load_dataset(f"parquet:{indexed}", "train")
    head = ds.head(20)
    assert len(head) == 20 and head.get([19])[1].tolist() == [19]
    with pytest.raises(NFNetError, match="fewer than one local batch"):
        Loader(head, 16, 8, train=True, process_count=4)  # 2 row groups among 4 processes
    with pytest.raises(NFNetError, match="shuffle-window"):
        Loader(ds, 16, 8, train=True, shuffle_window=0)
