"""Real multi-node Ray clusters on this machine, with raylets that pose as TPU v4 hosts.

`ray.cluster_utils.Cluster` starts a head and extra raylets as separate processes.
The fake TPU hosts advertise what Ray's TPU accelerator manager advertises on a real
TPU VM (no TPU exists here): `TPU: 4`, the slice's name as a resource,
`TPU-<type>-head` on worker 0, `accelerator_type:TPU-V4`, and the labels
`ray.io/tpu-slice-name`, `ray.io/tpu-worker-id`, `ray.io/tpu-topology`,
`ray.io/tpu-pod-type`, which Ray Train's slice reservation selects by, and the
environment GKE gives a TPU pod (`TPU_NAME`, `TPU_WORKER_ID`), from which Ray reads
the name of the slice it reserved.
Every raylet listens on its own loopback address (127.0.0.2, 127.0.0.3, ...), like
separate machines: the `node_ip` Tune reports with every result names a trial's host.

Authentication is chosen deliberately: token mode, as on the real clusters
(cluster/README.md), with a token made for the test (`RAY_AUTH_MODE=token`,
`RAY_AUTH_TOKEN`). It is set in this process (the raylets and every Ray worker
inherit it) and handed to every subprocess that joins the cluster; Ray's cached
auth state is refreshed on the way in and out, as Ray's own test helpers do.
Nothing under ~/.ray is read or written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from tuner.placement.tpu import tpu_slice

HEAD_CPUS = 0
# Memory each raylet's object store gets: small, the tests move little data.
OBJECT_STORE_BYTES = 80 * 2**20


def tpu_hosts(accelerator_type: str, slice_name: str, cpus: int) -> list[dict[str, Any]]:
    """`Cluster.add_node` arguments for every host of one fake TPU v4 slice."""
    shape = tpu_slice(accelerator_type)
    nodes = []
    for worker in range(shape.hosts):
        resources = {"TPU": float(shape.chips_per_host), slice_name: 1.0, "accelerator_type:TPU-V4": 1.0}
        if worker == 0:
            resources[shape.head_resource] = 1.0
        labels = {
            "ray.io/tpu-slice-name": slice_name,
            "ray.io/tpu-worker-id": str(worker),
            "ray.io/tpu-topology": shape.topology,
            "ray.io/tpu-pod-type": shape.accelerator_type,
        }
        env = {"TPU_NAME": slice_name, "TPU_WORKER_ID": str(worker)}
        nodes.append({"num_cpus": cpus, "resources": resources, "labels": labels, "env_vars": env})
    return nodes


def node_ip(index: int) -> str:
    """The loopback address of the `index`-th raylet of a fake cluster (the head keeps its own)."""
    return f"127.0.0.{index + 2}"


def auth_env() -> dict[str, str]:
    """Token auth with a fresh token, for the cluster and every client of it."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@contextlib.contextmanager
def fake_cluster(nodes: Sequence[Mapping[str, Any]], env: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A head that takes no work plus one raylet per entry of `nodes`; shut down on exit.

    `env` is set in this process while the cluster lives (raylets and their workers
    inherit it) and restored afterwards.
    """
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster

    env = {**auth_env(), **(env or {})}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        reset_auth_token_state()
        cluster = Cluster()
        try:
            cluster.add_node(num_cpus=HEAD_CPUS, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False)
            for i, node in enumerate(nodes):
                args = {"node_ip_address": node_ip(i), "object_store_memory": OBJECT_STORE_BYTES, **node}
                cluster.add_node(**args)
            cluster.wait_for_nodes()
            yield cluster
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
    reset_auth_token_state()


def client_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment (auth included) for a subprocess that joins the cluster."""
    return {**os.environ, **(extra or {})}
