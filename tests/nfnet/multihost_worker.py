"""One JAX process of a local multi-process training run (for tests/nfnet/test_multihost.py).

    python tests/nfnet/multihost_worker.py --config '<TrainConfig JSON>' --out result.json \\
        [--coordinator 127.0.0.1:PORT --num-processes 2 --process-id I]

With `--coordinator`, the process joins a `jax.distributed` job before it touches a
device: the same thing a TPU host of a multi-host slice does (Ray Train's JaxTrainer
calls `jax.distributed.initialize` there), with CPU devices and gloo collectives in
place of TPU chips and ICI. Without it, the process trains alone on its local
devices (set `XLA_FLAGS=--xla_force_host_platform_device_count=N` for N).
Each process writes its own summary of `nfnet.loop.train` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="TrainConfig fields as JSON")
    parser.add_argument("--out", required=True, help="where this process writes its summary (JSON)")
    parser.add_argument("--coordinator", help="host:port of process 0's coordinator service")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args()

    # Same compile settings as the test suite (tests/conftest.py): quick compiles.
    jax.config.update("jax_disable_most_optimizations", True)
    if args.coordinator:
        # gloo is jax's default cross-process collective on CPU; named so the test
        # does not depend on that default.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=120,
        )

    from nfnet.config import TrainConfig
    from nfnet.loop import train
    from nfnet.metrics import json_safe

    config = TrainConfig(**json.loads(args.config))
    summary = train(config)
    summary.update(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        global_devices=jax.device_count(),
        local_devices=jax.local_device_count(),
    )
    with open(args.out, "w") as f:
        json.dump(json_safe(summary), f)
    if args.coordinator:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
