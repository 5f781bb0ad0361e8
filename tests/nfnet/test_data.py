"""nfnet.data: every source against real files it reads, and the loader's order guarantees."""

from __future__ import annotations

import gzip
import io
import json
import math
import threading
from pathlib import Path

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nfnet.data import (
    MEAN,
    STD,
    ArrayDataset,
    Loader,
    epoch_permutation,
    eval_batches,
    load_dataset,
    normalise_on_device,
    steps_per_epoch,
    total_steps,
)
from nfnet.data.idx import FASHION_MNIST_ENV, FASHION_MNIST_SYSTEM_DIR, parse_idx
from nfnet.data.transforms import eval_boxes, normalise
from nfnet.errors import NFNetError


def indexed_dataset(n: int, size: int = 6, channels: int = 1) -> ArrayDataset:
    """Example i has label i and pixel value i % 256: batches reveal exactly which examples they hold."""
    images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, size, size, channels))
    return ArrayDataset("indexed", np.ascontiguousarray(images), np.arange(n, dtype=np.int32), num_classes=n)


def collect(loader: Loader) -> dict[int, tuple[np.ndarray, ...]]:
    with loader:
        return {step: batch for step, batch in loader}


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    dims = np.array(array.shape, ">u4").tobytes()
    data = bytes([0, 0, codes[array.dtype], array.ndim]) + dims + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


# ---------------------------------------------------------------- Fashion-MNIST / IDX


@pytest.mark.skipif(not Path(FASHION_MNIST_SYSTEM_DIR).is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_real_files(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    train = load_dataset("fashion_mnist", "train")
    test = load_dataset("fashion_mnist", "test")
    assert (len(train), len(test), train.num_classes) == (60000, 10000, 10)
    images, labels = train.get([0, 1, 59999])
    assert images.shape == (3, 28, 28, 1) and images.dtype == np.uint8 and labels.dtype == np.int32
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert labels[0] == 9  # the first training image of Fashion-MNIST is an ankle boot
    assert train.images.max() == 255 and train.images.min() == 0


@pytest.mark.parametrize("compress", [True, False])
def test_tiny_idx_files_via_data_dir_and_env(tmp_path, monkeypatch, compress):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 7), ("t10k", 3)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 5, 4), dtype=np.uint8), compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), compress)
    if compress:
        for p in tmp_path.iterdir():
            p.rename(p.with_name(p.name + ".gz"))
    ds = load_dataset("fashion_mnist", "train", data_dir=str(tmp_path))
    assert len(ds) == 7 and ds.get([6])[0].shape == (1, 5, 4, 1) and ds.get([6])[1].tolist() == [6]
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    assert len(load_dataset("fashion_mnist", "test")) == 3


def test_parse_idx_types_and_errors():
    values = np.array([[1, -2], [300000, 4]], ">i4")
    data = bytes([0, 0, 0x0C, 2]) + np.array([2, 2], ">u4").tobytes() + values.tobytes()
    parsed = parse_idx(data)
    assert parsed.dtype == np.int32 and parsed.dtype.isnative and parsed.tolist() == [[1, -2], [300000, 4]]
    with pytest.raises(NFNetError, match="bad magic"):
        parse_idx(b"\x1f\x8b\x08\x00junk")
    with pytest.raises(NFNetError, match="header"):
        parse_idx(data[:-1], "f.idx")


def test_missing_fashion_dir_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(NFNetError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion_mnist", "train", data_dir=str(missing))
    assert str(missing / "train-images-idx3-ubyte") in str(err.value)
    assert "--data-dir" in str(err.value)


# ---------------------------------------------------------------- digits / synthetic / registry


def test_digits_split_sizes_and_determinism():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test), train.num_classes) == (1437, 360, 10)
    assert train.images.shape[1:] == (8, 8, 1) and train.images.max() == 255
    assert set(np.bincount(test.labels)) <= {35, 36, 37}  # stratified
    again = load_dataset("digits", "test")
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)
    train_rows = {r.tobytes() + bytes([l]) for r, l in zip(train.images, train.labels)}
    overlap = sum(r.tobytes() + bytes([l]) in train_rows for r, l in zip(test.images, test.labels))
    assert overlap <= 2  # disjoint split (the digits set has a couple of exact duplicates)


def test_synthetic_is_deterministic_sized_and_learnable():
    ds = load_dataset("synthetic:n=600,classes=6,size=12", "train")
    again = load_dataset("synthetic", "train", n=600, classes=6, size=12)
    np.testing.assert_array_equal(ds.images, again.images)
    assert ds.images.shape == (600, 12, 12, 3) and ds.num_classes == 6
    assert np.bincount(ds.labels).tolist() == [100] * 6
    other = load_dataset("synthetic:n=600,classes=6,size=12,seed=1", "train")
    assert not np.array_equal(other.images, ds.images)
    test = load_dataset("synthetic:n=600,classes=6,size=12", "test")
    assert len(test) == 150
    # Class structure shared across splits: a least-squares linear probe on raw pixels beats chance.
    feats = lambda d: np.abs(np.fft.fft2(d.images.astype(np.float32) - 128, axes=(1, 2))).reshape(len(d), -1)
    w, *_ = np.linalg.lstsq(feats(ds), np.eye(6)[ds.labels], rcond=None)
    accuracy = np.mean(np.argmax(feats(test) @ w, axis=1) == test.labels)
    assert accuracy > 0.6


def test_registry_errors():
    with pytest.raises(NFNetError, match="known sources: fashion_mnist, digits, synthetic, parquet, imagefolder"):
        load_dataset("cifar10", "train")
    with pytest.raises(NFNetError, match="unknown split"):
        load_dataset("digits", "validation")
    with pytest.raises(NFNetError, match="unknown synthetic parameter"):
        load_dataset("synthetic:colours=3", "train")
    with pytest.raises(NFNetError, match="bad synthetic option"):
        load_dataset("synthetic:n=many", "train")
    with pytest.raises(NFNetError, match="needs a location"):
        load_dataset("parquet", "train")


# ---------------------------------------------------------------- Parquet


def image_for(label: int, row: int, rgb: bool) -> np.ndarray:
    shape = (10 + row % 3, 9, 3) if rgb else (10 + row % 3, 9)
    return np.full(shape, 20 * label + row, np.uint8)


def write_shard(path: Path, labels: list[int], rgb: bool = False, struct: bool = True, metadata: dict | None = None):
    encoded = [png(image_for(l, i, rgb)) for i, l in enumerate(labels)]
    image = (
        pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(encoded)],
                 pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        if struct
        else pa.array(encoded, pa.binary())
    )
    table = pa.table({"image": image, "label": pa.array(labels, pa.int64())})
    if metadata:
        table = table.replace_schema_metadata({"huggingface": json.dumps(metadata)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_parquet_hf_layout_reads_back(tmp_path):
    data = tmp_path / "data"
    write_shard(data / "train-00000-of-00002.parquet", [0, 1, 2])
    write_shard(data / "train-00001-of-00002.parquet", [3, 1], rgb=True)
    write_shard(data / "test-00000-of-00001.parquet", [6, 0])
    train = load_dataset(f"parquet:{tmp_path}", "train")
    test = load_dataset("parquet", "test", data_dir=str(tmp_path))
    assert (len(train), len(test)) == (5, 2)
    assert train.num_classes == test.num_classes == 7  # max label over both splits + 1
    images, labels = train.get([0, 2, 3, 4])
    assert labels.tolist() == [0, 2, 3, 1] and labels.dtype == np.int32
    assert images[0].shape == (10, 9, 1) and images[1].shape == (12, 9, 1)  # sizes vary, grayscale kept
    assert images[2].shape == (10, 9, 3)
    np.testing.assert_array_equal(images[1][..., 0], image_for(2, 2, rgb=False))
    np.testing.assert_array_equal(images[3], image_for(1, 1, rgb=True))


def test_parquet_binary_column_glob_validation_and_metadata(tmp_path):
    meta = {"info": {"features": {"image": {"_type": "Image"},
                                  "label": {"_type": "ClassLabel", "names": [f"c{i}" for i in range(12)]}}}}
    write_shard(tmp_path / "train" / "part-0.parquet", [4, 5], struct=False, metadata=meta)
    write_shard(tmp_path / "validation" / "part-0.parquet", [1], struct=False, metadata=meta)
    test = load_dataset(f"parquet:{tmp_path}", "test")  # no test* shards: falls back to validation
    assert len(test) == 1 and test.num_classes == 12
    train = load_dataset(f"parquet:{tmp_path}/train/*.parquet", "train")
    assert train.get([1])[1].tolist() == [5] and train.get([1])[0][0].shape == (11, 9, 1)
    with pytest.raises(NFNetError, match="no 'test' shards"):
        load_dataset(f"parquet:{tmp_path}/train/*.parquet", "test")


def test_parquet_corrupt_shard_is_named(tmp_path):
    write_shard(tmp_path / "train-00000-of-00002.parquet", [0, 1])
    bad = tmp_path / "train-00001-of-00002.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(NFNetError, match="train-00001-of-00002.parquet"):
        load_dataset(f"parquet:{tmp_path}", "train")


def test_parquet_corrupt_image_bytes_named_by_shard_and_row(tmp_path):
    table = pa.table({"image": pa.array([png(np.zeros((4, 4), np.uint8)), b"not a png"]), "label": [0, 1]})
    pq.write_table(table, tmp_path / "train.parquet")
    ds = load_dataset(f"parquet:{tmp_path}", "train")
    assert ds.get([0])[0][0].shape == (4, 4, 1)
    with pytest.raises(NFNetError, match=r"row 1 of Parquet shard .*train\.parquet"):
        ds.get([1])
    with pytest.raises(NFNetError, match=r"column\(s\) \['img'\]"):
        load_dataset(f"parquet:{tmp_path}", "train", image_column="img")


# ---------------------------------------------------------------- image folders


def test_imagefolder_classes_sorted_across_splits(tmp_path):
    for split, cls, n in (("train", "zebra", 2), ("train", "ant", 1), ("test", "moth", 1), ("test", "zebra", 1)):
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((6, 7, 3), 40 * i, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    (tmp_path / "train" / "zebra" / "notes.txt").write_text("not an image")
    train = load_dataset(f"imagefolder:{tmp_path}", "train")
    test = load_dataset(f"imagefolder:{tmp_path}", "test")
    assert train.num_classes == test.num_classes == 3  # ant, moth, zebra
    images, labels = train.get([0, 1, 2])
    assert labels.tolist() == [0, 2, 2] and images[2].shape == (6, 7, 3) and images[2].max() == 40
    assert test.get([0, 1])[1].tolist() == [1, 2]
    with pytest.raises(NFNetError, match="no test/validation/valid/val subdirectory"):
        load_dataset(f"imagefolder:{tmp_path / 'train'}", "test")


# ---------------------------------------------------------------- loader


def test_steps_and_budgets():
    assert steps_per_epoch(60000, 256) == 234
    assert total_steps(60000, 256, 0.25) == math.ceil(15000 / 256)
    assert total_steps(100, 64, 0.01) == 1
    with pytest.raises(NFNetError, match="epochs must be > 0"):
        total_steps(100, 10, 0)
    with pytest.raises(NFNetError, match="fewer than one batch"):
        steps_per_epoch(10, 16)


def test_loader_is_deterministic_and_seeded():
    ds = indexed_dataset(48)
    first = collect(Loader(ds, 8, 8, train=True, seed=3, num_steps=8, num_workers=2))
    inline = collect(Loader(ds, 8, 8, train=True, seed=3, num_steps=8, num_workers=0, prefetch=1))
    other = collect(Loader(ds, 8, 8, train=True, seed=4, num_steps=8))
    assert list(first) == list(range(8))
    for s in first:
        np.testing.assert_array_equal(first[s][0], inline[s][0])
        np.testing.assert_array_equal(first[s][1], inline[s][1])
    assert any(not np.array_equal(first[s][1], other[s][1]) for s in first)


def test_resume_reproduces_batches_across_epoch_boundary():
    ds = load_dataset("synthetic:n=40,n_test=8,classes=4,size=10", "train")
    full = collect(Loader(ds, 8, 12, train=True, seed=0, num_steps=13))  # spe = 5: epochs 0, 1, 2
    for start in (3, 7):
        resumed = collect(Loader(ds, 8, 12, train=True, seed=0, start_step=start, num_steps=13))
        assert list(resumed) == list(range(start, 13))
        for s in resumed:
            np.testing.assert_array_equal(resumed[s][0], full[s][0])  # augmentation included
            np.testing.assert_array_equal(resumed[s][1], full[s][1])


def test_each_example_at_most_once_per_epoch_in_permutation_order():
    n, batch = 50, 8
    ds = indexed_dataset(n)
    spe = steps_per_epoch(n, batch)
    batches = collect(Loader(ds, batch, 6, train=True, seed=11, num_steps=2 * spe))
    for epoch in range(2):
        seen = np.concatenate([batches[epoch * spe + k][1] for k in range(spe)])
        assert len(seen) == len(set(seen.tolist())) == spe * batch
        np.testing.assert_array_equal(seen, epoch_permutation(11, epoch, n)[: spe * batch])
    first_epoch = np.concatenate([batches[k][1] for k in range(spe)])
    second_epoch = np.concatenate([batches[spe + k][1] for k in range(spe)])
    assert not np.array_equal(first_epoch, second_epoch)


def test_augmentation_varies_by_epoch_but_eval_does_not():
    ds = indexed_dataset(8, size=9)
    ds.images[:] = np.random.default_rng(0).integers(0, 256, ds.images.shape, dtype=np.uint8)
    batches = collect(Loader(ds, 8, 9, train=True, seed=0, num_steps=2))
    order = [np.argsort(batches[s][1]) for s in (0, 1)]
    assert not np.allclose(batches[0][0][order[0]], batches[1][0][order[1]])
    x, y, mask = next(eval_batches(ds, 8, 9))
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x, np.repeat(ds.images, 3, axis=-1))  # no resize at the native size
    expected = (ds.images.astype(np.float32) / 255 - MEAN) / STD
    np.testing.assert_allclose(normalise(x), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.jit(normalise_on_device)(x)), expected, atol=1e-5)


def test_processes_partition_the_global_batch():
    ds = load_dataset("synthetic:n=64,classes=4,size=8", "train")
    whole = collect(Loader(ds, 16, 8, train=True, seed=5, num_steps=6))
    parts = [
        collect(Loader(ds, 16, 8, train=True, seed=5, num_steps=6, process_index=p, process_count=4))
        for p in range(4)
    ]
    for s in whole:
        assert parts[0][s][0].shape == (4, 8, 8, 3)
        np.testing.assert_array_equal(np.concatenate([p[s][0] for p in parts]), whole[s][0])
        np.testing.assert_array_equal(np.concatenate([p[s][1] for p in parts]), whole[s][1])
    with pytest.raises(NFNetError, match="not divisible by the 3 processes"):
        Loader(ds, 16, 8, train=True, process_count=3)
    with pytest.raises(NFNetError, match="process_index 4"):
        Loader(ds, 16, 8, train=True, process_index=4, process_count=4)


def test_eval_covers_every_example_once_with_padding_mask():
    n = 37
    ds = indexed_dataset(n)
    seen = []
    for p in range(2):
        batches = list(eval_batches(ds, 8, 6, process_index=p, process_count=2))
        assert len(batches) == 5
        for x, y, mask in batches:
            assert x.shape == (4, 6, 6, 3) and mask.dtype == np.float32 and y.dtype == np.int32
            seen += y[mask > 0].tolist()
    assert sorted(seen) == list(range(n))
    loader = Loader(ds, 8, 6, train=False)
    assert len(loader) == 5 and [s for s, _ in loader] == [0, 1, 2, 3, 4]
    assert next(iter(Loader(ds, 8, 6, train=False, start_step=4)))[1][2].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


@pytest.mark.parametrize("resolution", [16, 40])
@pytest.mark.parametrize("spec", ["digits", "synthetic:n=64,size=20"])
def test_output_shapes_and_dtypes(spec, resolution):
    ds = load_dataset(spec, "train")
    with Loader(ds, 32, resolution, train=True, seed=0, num_steps=1) as loader:
        (step, (x, y)), = list(loader)
    # uint8 to the device (a quarter of float32's bytes); the steps normalise there.
    assert step == 0 and x.shape == (32, resolution, resolution, 3) and x.dtype == np.uint8
    assert y.shape == (32,) and y.dtype == np.int32 and 0 <= y.min() and y.max() < ds.num_classes
    z = np.asarray(normalise_on_device(x))
    assert z.dtype == np.float32 and np.isfinite(z).all() and -2.2 < z.min() < z.max() < 2.7


def test_encoded_sources_of_varying_size_batch_to_one_shape(tmp_path):
    write_shard(tmp_path / "train.parquet", [0, 1, 2, 3], rgb=False)
    write_shard(tmp_path / "test.parquet", [1, 2, 0], rgb=True)
    for split, train in (("train", True), ("test", False)):
        ds = load_dataset(f"parquet:{tmp_path}", split)
        with Loader(ds, 2, 24, train=train, seed=0, num_steps=2) as loader:
            for _, batch in loader:
                assert batch[0].shape == (2, 24, 24, 3) and batch[0].dtype == np.uint8


def test_eval_boxes_resize_small_and_centre_crop_large():
    boxes = eval_boxes(np.array([[28, 28], [64, 48]]), 32)
    np.testing.assert_allclose(boxes[0], [0, 0, 28, 28])  # smaller than R: the whole image
    side = 48 * 32 / round(32 / 0.875)  # short side resized to R/0.875, then a centre crop of R
    np.testing.assert_allclose(boxes[1], [(48 - side) / 2, (64 - side) / 2, (48 + side) / 2, (64 + side) / 2])


def test_loader_rejects_small_dataset_and_closes_its_threads():
    with pytest.raises(NFNetError, match="fewer than one batch of 64"):
        Loader(indexed_dataset(10), 64, 8, train=True)
    loader = Loader(indexed_dataset(64), 8, 8, train=True, seed=0, num_workers=2)
    it = iter(loader)
    next(it)
    assert any(t.name.startswith("nfnet-data") for t in threading.enumerate())
    loader.close()
    assert not any(t.name.startswith("nfnet-data") for t in threading.enumerate())
    with pytest.raises(StopIteration):
        next(it)


def test_throughput_benchmark_runs(capsys):
    from bench_modules import load_benchmark

    bench = load_benchmark("data_throughput")
    assert bench.main(["--dataset", "digits", "--batch-size", "64", "--steps", "2", "--resolution", "16"]) == 0
    assert "images/s" in capsys.readouterr().out
    assert bench.main(["--dataset", "nope"]) == 2
    assert "error: unknown dataset source" in capsys.readouterr().err
