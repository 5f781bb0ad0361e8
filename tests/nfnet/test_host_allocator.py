"""The host allocator: which one $NFSCALE_HOST_ALLOCATOR picks, the environment that starts a
process on it, the re-exec of a command, and what it is for (no page faults per step)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nfnet import host_allocator
from nfnet.errors import NFNetError

ROOT = Path(__file__).resolve().parents[2]
JEMALLOC = host_allocator.find_jemalloc()
needs_jemalloc = pytest.mark.skipif(JEMALLOC is None, reason="libjemalloc.so.2 is not installed (apt-get install "
                                                               "libjemalloc2)")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("LD_PRELOAD", "MALLOC_CONF", host_allocator.ENV, host_allocator.REEXEC_MARK)}
    environ.update(env, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)


def test_the_choice_is_checked_with_a_one_line_fix(tmp_path):
    assert host_allocator.requested({}) == "auto"
    assert host_allocator.requested({host_allocator.ENV: " system "}) == "system"
    with pytest.raises(NFNetError, match=r"must be one of auto, jemalloc, system or a path .*got 'tcmalloc'"):
        host_allocator.requested({host_allocator.ENV: "tcmalloc"})
    with pytest.raises(NFNetError, match="no such file"):
        host_allocator.requested({host_allocator.ENV: str(tmp_path / "libjemalloc.so.2")})
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    assert host_allocator.requested({host_allocator.ENV: str(library)}) == str(library)


def test_the_environment_appends_to_ld_preload_and_keeps_a_users_malloc_conf(tmp_path, monkeypatch):
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    monkeypatch.setattr(host_allocator, "LIBRARY_DIRS", (str(tmp_path),))
    assert host_allocator.allocator_env("system", {}) == {}
    assert host_allocator.allocator_env("auto", {}) == {"LD_PRELOAD": str(library),
                                                        "MALLOC_CONF": host_allocator.MALLOC_CONF}
    env = host_allocator.allocator_env("jemalloc", {"LD_PRELOAD": "/opt/libother.so", "MALLOC_CONF": "narenas:2"})
    assert env == {"LD_PRELOAD": f"/opt/libother.so {library}", "MALLOC_CONF": "narenas:2"}
    # Already preloaded (by a user, or inherited): not added twice.
    assert host_allocator.allocator_env("auto", {"LD_PRELOAD": "/x/libjemalloc.so.2"})["LD_PRELOAD"] == \
        "/x/libjemalloc.so.2"


def test_asking_for_jemalloc_where_it_is_missing_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(host_allocator, "LIBRARY_DIRS", (str(tmp_path),))
    assert host_allocator.allocator_env("auto", {}) == {}  # auto: the system's, quietly
    with pytest.raises(NFNetError, match=r"libjemalloc\.so\.2 is not installed: .*apt-get install libjemalloc2"):
        host_allocator.allocator_env("jemalloc", {})


def test_a_command_with_a_bad_choice_exits_2_with_one_line():
    done = run_python("from nfnet import host_allocator; host_allocator.command_start(); print('ran')",
                      NFSCALE_HOST_ALLOCATOR="bogus")
    assert done.returncode == 2 and "ran" not in done.stdout
    assert done.stderr.strip().splitlines() == [
        "error: NFSCALE_HOST_ALLOCATOR must be one of auto, jemalloc, system or a path to libjemalloc.so.2, "
        "got 'bogus'"]


@needs_jemalloc
def test_a_command_restarts_itself_once_on_jemalloc_and_not_when_told_system():
    code = ("import sys; from nfnet import host_allocator; print('start', flush=True); "
            "host_allocator.command_start(); print(host_allocator.active(), sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", code, "--flag", "x y"], capture_output=True, text=True,
                          timeout=120, env={**{k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
                                            "PYTHONPATH": str(ROOT), host_allocator.ENV: "auto"})
    assert done.returncode == 0, done.stderr
    # Printed once before the restart and once after it; the arguments survive the restart.
    assert done.stdout.splitlines() == ["start", "start", f"{JEMALLOC} ['--flag', 'x y']"]
    done = run_python(code, NFSCALE_HOST_ALLOCATOR="system")
    assert done.stdout.splitlines() == ["start", "None []"]


@needs_jemalloc
def test_on_jemalloc_a_steps_buffers_stop_page_faulting():
    """What the allocator is for: XLA:CPU allocates a call's 64 MiB output afresh each call; on
    jemalloc its pages are reused, not faulted in again (16,384 4-KiB pages a call on glibc).

    Per call, the median: a call that lands on a thread whose jemalloc arena has not yet held
    a buffer that size faults it in once (seen on a 2-core VM: one call in ~60); after that
    the arena reuses it. A step that faulted every call, as on glibc, fails this."""
    code = """
import resource, statistics, jax, jax.numpy as jnp
from nfnet import host_allocator
f = jax.jit(lambda a: a * 2.0)
a = jnp.ones((1 << 24,), jnp.float32)
for _ in range(3):
    f(a).block_until_ready()
faults = []
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(a).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(host_allocator.active(), statistics.median(faults), sum(f > 4096 for f in faults))
"""
    done = run_python(code, **host_allocator.allocator_env("jemalloc", {}))
    assert done.returncode == 0, done.stderr
    library, median, faulted_in = done.stdout.split()
    assert library == JEMALLOC
    pages = (1 << 24) * 4 / 4096
    assert float(median) < 0.05 * pages
    assert int(faulted_in) <= 3  # calls that faulted a quarter of the buffer or more in, of 15


def test_the_launcher_runs_a_command_on_the_chosen_allocator_and_refuses_bad_input():
    code = "from nfnet import host_allocator; print(host_allocator.active())"
    done = run_python(f"import sys; sys.argv = ['x', sys.executable, '-c', {code!r}]; "
                      "from nfnet import host_allocator; host_allocator.main()", NFSCALE_HOST_ALLOCATOR="system")
    assert done.returncode == 0 and done.stdout.split() == ["None"], done.stderr
    if JEMALLOC:
        done = run_python(f"import sys; sys.argv = ['x', sys.executable, '-c', {code!r}]; "
                          "from nfnet import host_allocator; host_allocator.main()")
        assert done.stdout.split() == [JEMALLOC], done.stderr
    for args, message in (([], "error: no command given; usage: python -m nfnet.host_allocator COMMAND"),
                          (["no-such-command-here"], "error: cannot run 'no-such-command-here': No such file")):
        done = run_python(f"import sys; from nfnet import host_allocator; sys.exit(host_allocator.main({args!r}))")
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(message), done.stderr
