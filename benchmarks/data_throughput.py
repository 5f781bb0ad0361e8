"""Images per second of the nfnet data loader, train (augmented) and eval, with no model attached.

    .venv/bin/python benchmarks/data_throughput.py                       # fashion_mnist, 32px, batch 256
    .venv/bin/python benchmarks/data_throughput.py --dataset digits --resolution 64 --workers 1

The figure is an upper bound on the input rate a training step can be fed; a small model on two
CPU cores consumes a few thousand 32px images per second.
"""

from __future__ import annotations

import argparse
import sys
import time

from nfnet.data import Loader, load_dataset
from nfnet.errors import NFNetError


def measure(loader: Loader, warmup: int) -> float:
    """Images/s over the loader's batches after `warmup` batches."""
    count, start = 0, 0.0
    with loader:
        for i, (_, batch) in enumerate(loader):
            if i == warmup:
                start = time.perf_counter()
            elif i > warmup:
                count += len(batch[0])
    elapsed = time.perf_counter() - start
    return count / elapsed if elapsed > 0 and count else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60, help="train batches timed (after 3 warm-up)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        train = load_dataset(args.dataset, "train", data_dir=args.data_dir)
        test = load_dataset(args.dataset, "test", data_dir=args.data_dir)
        common = dict(num_workers=args.workers, prefetch=args.prefetch)
        train_rate = measure(
            Loader(train, args.batch_size, args.resolution, train=True, seed=0, num_steps=args.steps + 3, **common), 3
        )
        eval_rate = measure(Loader(test, args.batch_size, args.resolution, train=False, **common), 3)
    except NFNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.dataset} {args.resolution}px batch {args.batch_size} workers {args.workers}: "
        f"train {train_rate:,.0f} images/s, eval {eval_rate:,.0f} images/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
