"""A Parquet split several times larger than a memory cap, streamed: peak RSS against the cap, and the
loader's rate against what the training step consumes.

    .venv/bin/python benchmarks/stream_memory.py                       # 12.5 GiB of 64px JPEGs, cap 3 GiB
    .venv/bin/python benchmarks/stream_memory.py --gib 2 --cap-mib 512 --skip-train   # loader only

The cap is 3 GiB because the trainer's own process (JAX, XLA:CPU's compiled nano step at 64px)
peaks at 1.5-2.1 GiB with no data at all (batch 64-256); the dataset is 4x that, 12.5 GiB.

1. Writes (once; reused while its manifest matches) `--gib` GiB of encoded 64px JPEGs as Hugging Face
   style shards under `--data` (`train-NNNNN-of-NNNNN.parquet`, `--row-group-size` rows per row group,
   no Parquet compression or dictionary, so the file bytes are the encoded image bytes), plus a small
   test shard. The images are 4096 distinct procedural JPEGs (gratings plus noise) repeated, labels in
   10 classes: decoding costs what distinct images of the size cost, and writing takes seconds.
2. `loader`: a child process iterates the training Loader as `nfnet.loop` would (global batch
   `--batch-size`, 64px random-resized crops and flips, `--workers` decode threads, prefetch 4,
   `--shuffle-window` row groups) for `--loader-steps` batches after 5 warm-up ones; images/s
   delivered (decode included) and the row-group buffer's peak.
3. `step`: a child process times the trainer's compiled step for `--variant` at the same resolution
   and batch on random uint8 batches already on the device (benchmarks/train_throughput.py): the
   images/s the trainer consumes.
4. `train`: a real `python -m nfnet.train` run on the streamed dataset, `--train-steps` steps.
Each child's peak RSS is its `ru_maxrss` (os.wait4), compared with `--cap-mib`. The figures go in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
POOL = 4096
CLASSES = 10
TEST_ROWS = 2048


def _pool(size: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(POOL):
        f, ph = rng.uniform(1, 6, 3), rng.uniform(0, 2 * np.pi, 3)
        base = np.stack([np.sin(2 * np.pi * f[c] * (xx * np.cos(ph[c]) + yy * np.sin(ph[c])) + ph[c])
                         for c in range(3)], -1)
        im = np.clip(127 + 80 * base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_dataset(data: Path, gib: float, image_size: int, row_group_size: int, shard_rows: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = {"gib": gib, "image_size": image_size, "row_group_size": row_group_size, "shard_rows": shard_rows}
    mpath = data / "manifest.json"
    if mpath.exists() and json.loads(mpath.read_text()).get("spec") == manifest:
        return json.loads(mpath.read_text())
    data.mkdir(parents=True, exist_ok=True)
    for old in data.glob("*.parquet"):
        old.unlink()
    pool = _pool(image_size)
    sizes = np.array([len(b) for b in pool])
    rows = int(gib * 2**30 / sizes.mean())
    shards = -(-rows // shard_rows)
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    start = time.perf_counter()

    def write(path: Path, first: int, count: int) -> None:
        with pq.ParquetWriter(path, pa.schema([("image", kind), ("label", pa.int64())]), compression="none",
                              use_dictionary=False) as writer:
            for lo in range(first, first + count, row_group_size):
                ids = (np.arange(lo, min(lo + row_group_size, first + count)) * 7919) % POOL
                image = pa.StructArray.from_arrays(
                    [pa.array([pool[i] for i in ids], pa.binary()), pa.array([f"{i}.jpg" for i in ids])],
                    fields=list(kind))
                writer.write_table(pa.table({"image": image, "label": pa.array(ids % CLASSES, pa.int64())}),
                                   row_group_size=row_group_size)

    for s in range(shards):
        write(data / f"train-{s:05d}-of-{shards:05d}.parquet", s * shard_rows, min(shard_rows, rows - s * shard_rows))
    write(data / "test-00000-of-00001.parquet", 0, TEST_ROWS)
    info = {"spec": manifest, "rows": rows, "shards": shards, "write_s": round(time.perf_counter() - start, 1),
            "train_bytes": sum(p.stat().st_size for p in data.glob("train-*.parquet")),
            "mean_image_bytes": float(sizes.mean())}
    mpath.write_text(json.dumps(info))
    return info


def child(args: list[str]) -> tuple[dict, float, float]:
    """Run `args` (a python command) to its end: (last JSON line of its stdout or {}, peak RSS MiB, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child {' '.join(args[:3])} ... exited {proc.returncode}:\n{out[-3000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), usage.ru_maxrss / 1024, time.perf_counter() - start


def phase_loader(a: argparse.Namespace) -> None:
    from nfnet.data import Loader, load_dataset

    ds = load_dataset(f"parquet:{a.data}", "train")
    warm = 5
    count, start = 0, 0.0
    with Loader(ds, a.batch_size, a.resolution, train=True, seed=0, num_workers=a.workers, prefetch=4,
                num_steps=warm + a.loader_steps, shuffle_window=a.shuffle_window) as loader:
        for i, (_, (x, _)) in enumerate(loader):
            if i == warm - 1:
                start = time.perf_counter()
            elif i >= warm:
                count += len(x)
    elapsed = time.perf_counter() - start
    b = ds.buffer
    print(json.dumps({"images_per_s": count / elapsed, "images": count, "row_groups": ds.row_groups,
                      "row_groups_read": b.loads, "peak_row_groups": b.peak_groups,
                      "peak_buffer_mib": b.peak_bytes / 2**20, "examples": len(ds)}))


def phase_step(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_throughput import build, time_steps

    built = build(a.variant, a.batch_size, a.resolution, "float32", num_classes=CLASSES)
    time_steps(built, 2)
    times, _, _ = time_steps(built, a.step_steps)
    step_s = float(np.median(times))
    print(json.dumps({"images_per_s": a.batch_size / step_s, "step_s": step_s}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("/tmp/nfscale-stream-bench"), help="where the shards go")
    p.add_argument("--gib", type=float, default=12.5, help="encoded GiB of the train split")
    p.add_argument("--cap-mib", type=float, default=3072, help="the memory cap every child's peak RSS is held to")
    p.add_argument("--image-size", type=int, default=64, help="stored image side in px")
    p.add_argument("--row-group-size", type=int, default=500)
    p.add_argument("--shard-rows", type=int, default=100_000)
    p.add_argument("--resolution", type=int, default=64, help="training resolution")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shuffle-window", type=int, default=16)
    p.add_argument("--variant", default="nano")
    p.add_argument("--loader-steps", type=int, default=100, help="timed loader batches")
    p.add_argument("--step-steps", type=int, default=8, help="timed training steps")
    p.add_argument("--train-steps", type=int, default=20, help="steps of the real nfnet.train run")
    p.add_argument("--skip-train", action="store_true", help="leave out the real nfnet.train run")
    p.add_argument("--phase", choices=["loader", "step"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.phase == "loader":
        phase_loader(a)
        return 0
    if a.phase == "step":
        phase_step(a)
        return 0

    info = write_dataset(a.data, a.gib, a.image_size, a.row_group_size, a.shard_rows)
    gib = info["train_bytes"] / 2**30
    print(f"dataset: {info['rows']:,} rows, {gib:.2f} GiB encoded in {info['shards']} shards "
          f"({info['mean_image_bytes']:.0f} B per image, {a.row_group_size} rows per row group), "
          f"{gib * 1024 / a.cap_mib:.1f}x the cap of {a.cap_mib:.0f} MiB", flush=True)
    me = [str(Path(__file__).resolve()), "--data", str(a.data), "--batch-size", str(a.batch_size),
          "--resolution", str(a.resolution), "--workers", str(a.workers), "--shuffle-window",
          str(a.shuffle_window), "--variant", a.variant, "--loader-steps", str(a.loader_steps),
          "--step-steps", str(a.step_steps)]
    results = {"dataset": info, "cap_mib": a.cap_mib}
    loader, rss, _ = child([*me, "--phase", "loader"])
    results["loader"] = {**loader, "peak_rss_mib": rss}
    print(f"loader: {loader['images_per_s']:,.0f} images/s over {loader['images']:,} images; peak RSS "
          f"{rss:,.0f} MiB; buffer peak {loader['peak_row_groups']} row groups, "
          f"{loader['peak_buffer_mib']:.1f} MiB", flush=True)
    step, rss, _ = child([*me, "--phase", "step"])
    results["step"] = {**step, "peak_rss_mib": rss}
    ratio = loader["images_per_s"] / step["images_per_s"]
    print(f"train step ({a.variant}, {a.resolution}px, batch {a.batch_size}): {step['images_per_s']:,.0f} images/s "
          f"({step['step_s'] * 1e3:.0f} ms/step); peak RSS {rss:,.0f} MiB; loader / step = {ratio:.2f}", flush=True)
    if not a.skip_train:
        epochs = a.train_steps * a.batch_size / info["rows"]
        workdir = a.data.parent / (a.data.name + "-run")
        shutil.rmtree(workdir, ignore_errors=True)
        summary, rss, seconds = child([
            "-m", "nfnet.train", "--variant", a.variant, "--dataset", f"parquet:{a.data}",
            "--resolution", str(a.resolution), "--batch-size", str(a.batch_size), "--epochs", repr(epochs),
            "--lr", "0.4", "--evals-per-run", "1", "--shuffle-window", str(a.shuffle_window),
            "--num-workers", str(a.workers), "--no-progress", "--workdir", str(workdir)])
        results["train"] = {"peak_rss_mib": rss, "seconds": seconds, "summary": summary}
        print(f"nfnet.train: {summary.get('steps')} steps in {seconds:.0f} s, "
              f"{summary.get('images_per_sec', float('nan')):,.0f} images/s between evaluations, "
              f"val loss {summary.get('val_loss')}; peak RSS {rss:,.0f} MiB", flush=True)
    worst = max(r["peak_rss_mib"] for k, r in results.items() if k in ("loader", "step", "train"))
    verdict = "under" if worst < a.cap_mib else "OVER"
    print(f"peak RSS {worst:,.0f} MiB: {verdict} the cap of {a.cap_mib:.0f} MiB; "
          f"dataset {gib * 1024 / a.cap_mib:.1f}x the cap; loader {ratio:.2f}x the step")
    print(json.dumps(results, default=float))
    return 0 if verdict == "under" else 1


if __name__ == "__main__":
    sys.exit(main())
