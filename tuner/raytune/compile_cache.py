"""JAX compilation on Ray: one persistent compilation cache per node for every trial
(`compilation_cache_env`, `apply_compilation_cache`), the clock of a trial's compile
time and cache hits (`CompileClock`, from `jax.monitoring` events), and when to use
XLA's quick compile (`use_fast_compile`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any




DEFAULT_JAX_CACHE = "~/.cache/nfscale/jax"


def compilation_cache_env(cache_dir: str | None = None) -> dict[str, str]:
    """Environment that makes JAX share a persistent compilation cache between trials.

    The cache is node-local (`~/.cache/nfscale/jax` unless `cache_dir` or
    $JAX_COMPILATION_CACHE_DIR says otherwise): every trial on a node reads what
    the first one compiled. Every program is cached, however quick its compile
    and however small (JAX's defaults skip compiles under a second, which on a CPU
    is most of them).
    """
    directory = cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_JAX_CACHE
    if "://" not in directory:
        directory = str(Path(directory).expanduser().absolute())
    return {
        "JAX_COMPILATION_CACHE_DIR": directory,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


COMPILE_SECONDS = "compile_seconds"


COMPILE_CACHE_HITS = "compile_cache_hits"


# JAX's monitoring events for the stages of turning a function into an executable.
_COMPILE_EVENTS = frozenset({
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
})


_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def apply_compilation_cache() -> None:
    """Point JAX at the node's persistent compilation cache before it compiles anything."""

    for name, value in compilation_cache_env().items():
        os.environ.setdefault(name, value)
    import jax

    # The variables are read when jax is first imported; a worker that imported
    # it earlier gets the same settings through jax.config.
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )
    jax.config.update(
        "jax_persistent_cache_min_entry_size_bytes",
        int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
    )


class CompileClock:
    """Adds up JAX's compile events while active (a context manager over jax.monitoring)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cache_hits = 0

    def _duration(self, event: str, duration: float, **kwargs: Any) -> None:
        if event in _COMPILE_EVENTS:
            self.seconds += duration

    def _event(self, event: str, **kwargs: Any) -> None:
        if event == _CACHE_HIT_EVENT:
            self.cache_hits += 1

    def __enter__(self) -> CompileClock:
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)
        return self

    def __exit__(self, *exc: object) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._duration)
        jax.monitoring.unregister_event_listener(self._event)


def use_fast_compile(fast_compile: bool | None, address: str | None, accelerator: str) -> bool:
    """XLA's quick compile (most optimisations off) unless told otherwise: on by default for
    CPU trials of a local Ray, where compiling is most of a short run; off on clusters
    and accelerators, where the full compile pays for itself."""
    if fast_compile is not None:
        return fast_compile
    return address is None and accelerator.strip().lower() == "cpu"
