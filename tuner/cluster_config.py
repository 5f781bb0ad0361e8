"""`python -m tuner.cluster_config`: check the cluster files in `cluster/` offline.

    python -m tuner.cluster_config validate cluster/*.yaml
    python -m tuner.cluster_config validate --strict cluster/tpu-v4.yaml   # before `ray up`

The checks are tuner/clusterfiles/checks.py; the TPU v4 slice shapes tuner/placement/tpu.py.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from tuner.cli import run_command
from tuner.clusterfiles.checks import unfilled_placeholders, validate_file


def build_parser() -> argparse.ArgumentParser:
    from nfnet.cli import FlagParser

    parser = FlagParser(
        prog="python -m tuner.cluster_config",
        description="Check cluster files offline: `ray up` YAML and KubeRay manifests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser(
        "validate",
        help="print OK or the problems of each file",
        description="Check each file as Ray's cluster launcher (or the KubeRay operator) would, plus "
        "nfscale's own checks; print OK or one line per problem, naming its key.",
    )
    validate.add_argument(
        "files", nargs="+", metavar="FILE",
        help="a `ray up` cluster YAML or a KubeRay RayCluster manifest (either is recognised)",
    )
    validate.add_argument(
        "--strict",
        action="store_true",
        help="also report YOUR_... placeholders left in the file (use before launching)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    failed = False
    for file in args.files:
        problems = validate_file(file)
        if args.strict:
            problems += unfilled_placeholders(file)
        if problems:
            failed = True
            for problem in problems:
                print(f"{file}: {problem}")
        else:
            print(f"{file}: OK")
    return 2 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
