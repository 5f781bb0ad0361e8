"""TPU v4 slice shapes: accelerator type (`v4-32`) to topology, chips and hosts, and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping


from tuner.errors import TunerError


# TPU v4 slices (Google Cloud, "TPU v4" system architecture): the type name
# counts TensorCores, 2 per chip; a host (one TPU VM) holds 4 chips; the
# topology is the 3-D mesh of chips. v4-8 = 4 chips on 1 host, v4-32 = 16 chips
# on 4 hosts. Ray's TPU code (ray._private.accelerators.tpu) accepts every
# shape listed here.
V4_TOPOLOGIES: Mapping[str, str] = MappingProxyType(
    {
        "v4-8": "2x2x1",
        "v4-16": "2x2x2",
        "v4-32": "2x2x4",
        "v4-64": "2x4x4",
        "v4-128": "4x4x4",
        "v4-256": "4x4x8",
        "v4-512": "4x8x8",
        "v4-1024": "8x8x8",
        "v4-1536": "8x8x12",
        "v4-2048": "8x8x16",
    }
)


V4_CORES_PER_CHIP = 2


V4_CHIPS_PER_HOST = 4


_KNOWN_V4 = ", ".join(V4_TOPOLOGIES)


@dataclass(frozen=True)
class TpuSlice:
    """One TPU v4 slice shape: what a trial that needs the whole slice reserves."""

    accelerator_type: str
    topology: str
    chips: int
    hosts: int

    @property
    def chips_per_host(self) -> int:
        return V4_CHIPS_PER_HOST

    @property
    def head_resource(self) -> str:
        """The resource Ray gives worker 0 of a slice (one per slice)."""
        return f"TPU-{self.accelerator_type}-head"


def tpu_slice(accelerator_type: str) -> TpuSlice:
    """The slice shape of a TPU v4 accelerator type such as "v4-32"."""
    name = str(accelerator_type).strip().lower()
    if name not in V4_TOPOLOGIES:
        raise TunerError(
            f"unknown TPU accelerator type {accelerator_type!r}: use a TPU v4 slice "
            f"type, one of {_KNOWN_V4}"
        )
    chips = int(name.split("-")[1]) // V4_CORES_PER_CHIP
    return TpuSlice(
        accelerator_type=name,
        topology=V4_TOPOLOGIES[name],
        chips=chips,
        hosts=chips // V4_CHIPS_PER_HOST,
    )


def tpu_hosts(accelerator_type: str) -> int:
    """Hosts (TPU VMs, one JAX process each) in a slice: v4-8 → 1, v4-32 → 4."""
    return tpu_slice(accelerator_type).hosts


def tpu_topology(accelerator_type: str) -> str:
    """The chip mesh of a slice, as Ray and GKE write it: v4-32 → "2x2x4"."""
    return tpu_slice(accelerator_type).topology


def tpu_type_for_topology(topology: str) -> str:
    """The TPU v4 accelerator type of a chip mesh: "2x2x4" → "v4-32"."""
    wanted = str(topology).strip().lower()
    for name, mesh in V4_TOPOLOGIES.items():
        if mesh == wanted:
            return name
    raise TunerError(
        f"unknown TPU v4 topology {topology!r}: use one of "
        f"{', '.join(V4_TOPOLOGIES.values())}"
    )
