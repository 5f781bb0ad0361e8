"""The Ray connection: start Ray in-process (no address) or join a cluster, failing in
seconds when it cannot be reached, and check before a run that the cluster has (or
its autoscaler can add, within `--wait-for-nodes`) the resources the trials ask for.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from nfnet import host_allocator
from nfnet.errors import NFNetError
from tuner.errors import TunerError
from tuner.raytune.compile_cache import compilation_cache_env


# Seconds to wait for a cluster's GCS port to answer before giving up, plus the
# time a child process takes to import Ray for the GCS check.
CONNECT_TIMEOUT_S = 5.0


GCS_CHECK_STARTUP_S = 15.0


@dataclass(frozen=True)
class RayConnection:
    """A live Ray connection; `shutdown()` stops Ray only when this process started it."""

    address: str | None
    started: bool

    def shutdown(self) -> None:
        if self.started and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _host_port(address: str) -> tuple[str, int]:
    bare = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TunerError(f"Ray address {address!r} is not host:port; pass e.g. --address 10.0.0.2:6379 or auto")
    return host.strip("[]"), int(port)


def _resolve_auto() -> str:
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError) as exc:
        raise TunerError(
            f"--address auto found no running Ray cluster ({exc}); start one with `ray start --head` or drop --address"
        ) from None
    if not found:
        raise TunerError("--address auto found no running Ray cluster; start one with `ray start --head` or drop --address")
    return found


# Asks the cluster's GCS for one key, in a child process that can be killed:
# `ray.init` to an address that is not a Ray GCS it may talk to retries for minutes.
_GCS_CHECK = (
    "import sys; from ray._raylet import GcsClient; "
    "GcsClient(address=sys.argv[1]).internal_kv_get(b'nfscale-probe', None, timeout=5)"
)


def _unreachable(address: str, reason: str) -> TunerError:
    return TunerError(
        f"cannot reach a Ray cluster at {address}: {reason}; start one with `ray start --head` or drop --address"
    )


def _probe(address: str, timeout: float) -> None:
    """Fail in seconds on an address where no Ray cluster answers."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise _unreachable(address, exc.strerror or str(exc) or type(exc).__name__) from None
    if address.startswith("ray://"):
        return  # a Ray Client server, not a GCS: the open port is all that can be checked cheaply
    try:
        check = subprocess.run(
            [sys.executable, "-c", _GCS_CHECK, f"{host}:{port}"],
            capture_output=True,
            text=True,
            timeout=timeout + GCS_CHECK_STARTUP_S,
        )
    except subprocess.TimeoutExpired:
        raise _unreachable(
            address,
            f"the port is open but no Ray GCS answered within {timeout + GCS_CHECK_STARTUP_S:g}s "
            "(a cluster with token authentication also needs its token: RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)",
        ) from None
    if check.returncode != 0:
        lines = [line for line in check.stderr.strip().splitlines() if line.strip()]
        raise _unreachable(address, lines[-1] if lines else f"GCS check exited with {check.returncode}")


def trial_allocator_env(address: str | None) -> dict[str, str]:
    """What starts trial processes on jemalloc (`nfnet.host_allocator`): on a Ray instance
    this driver starts, whenever $NFSCALE_HOST_ALLOCATOR (default `auto`) finds it here; on
    a cluster, only when the variable asks for it by name or path, as this machine's
    library says nothing of the nodes'."""
    try:
        choice = host_allocator.requested()
        if address is not None and choice == "auto":
            return {}
        return host_allocator.allocator_env(choice)
    except NFNetError as exc:
        raise TunerError(str(exc)) from None


def connect(
    address: str | None,
    num_cpus: int | None = None,
    env_vars: Mapping[str, str] | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> RayConnection:
    """Start Ray in-process (`address` None) or join the cluster at `address` (`auto` allowed).

    With no address, $RAY_ADDRESS (set for drivers of Ray jobs) is joined when
    set. Trials get `env_vars` (by default `compilation_cache_env()`) through the
    job's runtime environment, after `trial_allocator_env(address)`. If Ray is already initialised in this process it
    is used as it is and left running.
    """
    if ray.is_initialized():
        return RayConnection(ray.get_runtime_context().gcs_address, started=False)
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = dict(compilation_cache_env() if env_vars is None else env_vars)
    if address is not None and env_vars is None and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        # Each node of a cluster keeps the cache under its own home directory,
        # which the trainable resolves there; the driver's path may not exist on it.
        env.pop("JAX_COMPILATION_CACHE_DIR")
    env = {**trial_allocator_env(address), **env}
    common: dict[str, Any] = dict(
        runtime_env={"env_vars": env},
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=True,
    )
    # Ray starts its processes with subprocess (fork, then exec at once), which JAX's
    # fork warning does not concern; it would add two lines to every command's output.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    if address is None:
        # Ray turns on token authentication for the instance it starts and says so
        # at WARNING; for an in-process instance that only this driver uses it is noise.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **common)
        return RayConnection(None, started=True)
    target = _resolve_auto() if address == "auto" else address
    _probe(target, timeout)
    try:
        ray.init(address=target, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise TunerError(
            f"cannot join the Ray cluster at {address}: {exc}; check that its Ray version matches ({ray.__version__})"
        ) from None
    return RayConnection(target, started=False)


# How long a command waits for a cluster's autoscaler to add a node a trial needs.
DEFAULT_NODE_WAIT_S = 900.0


NODE_POLL_S = 5.0


NODE_WAIT_HELP = (f"seconds to wait for a cluster's autoscaler to add a node that can hold a trial before "
                  f"giving up (default {DEFAULT_NODE_WAIT_S:g}); an in-process Ray never waits")


def _fmt_resources(resources: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


def _alive_nodes() -> list[dict[str, float]]:
    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def _fits(request: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in request.items() if v > 0)


def _shortfall(label: str, request: Mapping[str, float], nodes: Sequence[Mapping[str, float]],
               in_process: bool) -> str:
    """One line: what a trial asks for that no node has, and the flag that fixes it."""
    where = "the in-process Ray" if in_process else "the cluster"
    wanted = _fmt_resources(request)
    missing = [k for k in request if request[k] > 0 and not any(n.get(k, 0.0) >= request[k] for n in nodes)]
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if "CPU" in missing and len(missing) == 1:
        fix = f"lower --cpus-per-trial to at most {most_cpus:g}" if most_cpus > 0 else "give Ray CPUs"
        if in_process:
            fix += " (or raise --num-cpus to oversubscribe this machine)"
        return (f"a {label} trial asks for {wanted}, but no node of {where} has more than {most_cpus:g} CPUs; {fix}")
    if "GPU" in missing:
        fix = ("use --accelerator cpu, or join a cluster with GPU nodes (--address)" if in_process
               else "use --accelerator cpu, or add GPU nodes to the cluster")
        return f"a {label} trial asks for {wanted}, but {where} has no GPU; {fix}"
    if any(k.startswith("TPU") or k.startswith("accelerator_type") for k in missing):
        fix = ("run on a TPU cluster (--address auto on its head node), or use --accelerator cpu" if in_process
               else "check the cluster's TPU node types (cluster/*.yaml) and --accelerator")
        return f"a {label} trial asks for {wanted}, but {where} has no node with {', '.join(missing)}; {fix}"
    return (f"a {label} trial asks for {wanted}, but no node of {where} holds all of it "
            f"(largest: {_fmt_resources(max(nodes, key=lambda n: n.get('CPU', 0.0)) if nodes else {})}); "
            "lower --cpus-per-trial or change --accelerator")


def check_ray_options(num_cpus: int | None, wait_for_nodes: float) -> None:
    """The flags every Ray command shares (`--num-cpus`, `--wait-for-nodes`), checked before Ray starts."""
    if num_cpus is not None and num_cpus < 1:
        raise TunerError(f"--num-cpus must be at least 1, got {num_cpus}; leave it out to give Ray every CPU")
    if not (math.isfinite(wait_for_nodes) and wait_for_nodes >= 0):
        raise TunerError(f"--wait-for-nodes must be a number of seconds >= 0, got {wait_for_nodes}")


def placement_requests(placements: Iterable[Any]) -> dict[str, dict[str, float]]:
    """What each trial placement (tuner.placement.trial.TrialPlacement) asks one node for, by label."""
    out: dict[str, dict[str, float]] = {}
    for p in placements:
        out[p.variant] = dict(p.resources)
        if p.worker_resources:
            out[f"{p.variant} (slice host)"] = dict(p.worker_resources)
    return out


def check_resources(
    requests: Mapping[str, Mapping[str, float]],
    connection: RayConnection,
    log: Any = print,
    wait_s: float = DEFAULT_NODE_WAIT_S,
    poll_s: float = NODE_POLL_S,
) -> None:
    """Fail in one line, before any trial starts, when no node can ever hold a trial.

    `requests` maps a label (the variant) to one trial's resources (its placement
    group's bundle, or a slice host's). An in-process Ray cannot grow, so a request
    none of its nodes meets is an error at once. A joined cluster may autoscale: the
    command says what it waits for, asks the autoscaler for it, and gives up after
    `wait_s` seconds instead of waiting forever.
    """
    pending = {label: dict(r) for label, r in requests.items()}

    def unmet() -> dict[str, dict[str, float]]:
        nodes = _alive_nodes()
        return {label: r for label, r in pending.items() if not any(_fits(r, n) for n in nodes)}

    missing = unmet()
    if not missing:
        return
    label, request = next(iter(missing.items()))
    if connection.started:
        raise TunerError(_shortfall(label, request, _alive_nodes(), in_process=True))
    from ray.autoscaler.sdk import request_resources

    wanted = "; ".join(f"{lbl}: {_fmt_resources(r)}" for lbl, r in missing.items())
    log(f"waiting up to {wait_s:g}s for the cluster to add a node for a trial ({wanted}); "
        "its autoscaler starts one when a node type has these resources (Ctrl-C stops)")
    request_resources(bundles=list(missing.values()))
    deadline = time.monotonic() + wait_s
    try:
        while missing and time.monotonic() < deadline:
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            missing = unmet()
    finally:
        request_resources(bundles=[])
    if missing:
        label, request = next(iter(missing.items()))
        raise TunerError(f"gave up after {wait_s:g}s: " + _shortfall(label, request, _alive_nodes(), in_process=False)
                         + " (or raise --wait-for-nodes)")
