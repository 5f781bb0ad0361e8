"""Shared test set-up: JAX on the CPU with most optimizations off, so compiles are quick."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
