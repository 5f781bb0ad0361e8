"""The host memory allocator that XLA:CPU's buffers come from: jemalloc where installed.

XLA:CPU allocates an executable's output and temporary buffers afresh on every call. glibc's
malloc hands a freed block of that size back to the kernel (an mmap'd chunk is unmapped, a
thread arena is trimmed), so the next step touches new pages: one page fault per 4 KiB. On the
2-core VM of docs/benchmarks.md that costs about 2.3 us a page, so a 64 MiB buffer written by a
step takes 37 ms instead of 6 (3.6 against 22 GB/s, counting its read and write), and the
trainer spent a quarter of nano's CPU step and a sixth of F0's in the kernel's page-fault
handler. jemalloc with `dirty_decay_ms:-1` keeps freed pages mapped and hands them out again:
no page faults after the first step. Nothing else changes; losses are bit-identical.

A process picks its allocator when it starts (`LD_PRELOAD`), so this module only builds the
environment that selects it:

- `allocator_env()` is merged into the environment of Ray's trial processes
  (`tuner.raytune.connection.connect`) on a local Ray instance;
- `reexec_with_allocator()` restarts a command-line entry point (`python -m nfnet.train`,
  `nfnet.finetune`, the benchmarks) under it, once, before any work.

`$NFSCALE_HOST_ALLOCATOR` chooses: `auto` (the default: jemalloc when `libjemalloc.so.2` is
installed, e.g. Debian's `libjemalloc2`, else the system's), `jemalloc` (an error when it is
not installed), `system`, or the path of a jemalloc shared library. A `$MALLOC_CONF` the user
set is kept as it is. The cost: a process keeps the pages of its peak use mapped until it
exits, which for a trainer is what each step uses anyway.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nfnet.errors import NFNetError, one_line

ENV = "NFSCALE_HOST_ALLOCATOR"
CHOICES = ("auto", "jemalloc", "system")
LIBRARY = "libjemalloc.so.2"
# Never purge freed pages: a step reuses them instead of faulting fresh ones in.
MALLOC_CONF = "dirty_decay_ms:-1"
# Set in the environment of a process that `reexec_with_allocator` restarted, so that it
# restarts at most once.
REEXEC_MARK = "NFSCALE_HOST_ALLOCATOR_REEXEC"
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                "/usr/local/lib", "/opt/homebrew/lib")
INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install libjemalloc2)"


def requested(environ: dict[str, str] | None = None) -> str:
    """$NFSCALE_HOST_ALLOCATOR, checked: one of CHOICES or the path of an existing file."""
    value = (os.environ if environ is None else environ).get(ENV, "auto").strip() or "auto"
    if value in CHOICES:
        return value
    if "/" in value:
        if not Path(value).is_file():
            raise NFNetError(f"{ENV}={value}: no such file; give the path of libjemalloc.so.2, "
                             f"or one of {', '.join(CHOICES)}")
        return value
    raise NFNetError(f"{ENV} must be one of {', '.join(CHOICES)} or a path to libjemalloc.so.2, got {value!r}")


def find_jemalloc(dirs: tuple[str, ...] | None = None) -> str | None:
    """The path of an installed libjemalloc.so.2 (in `dirs`, default LIBRARY_DIRS), or None."""
    for directory in LIBRARY_DIRS if dirs is None else dirs:
        candidate = Path(directory) / LIBRARY
        if candidate.is_file():
            return str(candidate)
    return None


def library_for(choice: str) -> str | None:
    """The jemalloc library `choice` selects, None for the system allocator."""
    if choice == "system":
        return None
    if choice not in CHOICES:  # a path, checked by `requested`
        return choice
    found = find_jemalloc()
    if found is None and choice == "jemalloc":
        raise NFNetError(f"{ENV}=jemalloc but {LIBRARY} is not installed: {INSTALL_HINT}, "
                         f"or set {ENV}=system")
    return found


def allocator_env(choice: str | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables that start a process on the allocator `choice` (default:
    $NFSCALE_HOST_ALLOCATOR) picks: {} for the system's, else LD_PRELOAD (appended to one
    already set) and MALLOC_CONF (a user's own kept)."""
    environ = dict(os.environ if environ is None else environ)
    library = library_for(choice or requested(environ))
    if library is None:
        return {}
    preload = [p for p in environ.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    if not any(Path(p).name.startswith("libjemalloc") for p in preload):
        preload.append(library)
    return {"LD_PRELOAD": " ".join(preload), "MALLOC_CONF": environ.get("MALLOC_CONF", MALLOC_CONF)}


def active() -> str | None:
    """The jemalloc library mapped into this process, or None (the system allocator)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return None
    for line in maps.splitlines():
        fields = line.split()
        if fields and Path(fields[-1]).name.startswith("libjemalloc"):
            return fields[-1]
    return None


def describe() -> str:
    """This process's allocator in a few words, for a benchmark's or a run's header."""
    library = active()
    return f"jemalloc ({library})" if library else "the system's malloc"


def reexec_with_allocator() -> None:
    """Restart this command under the allocator $NFSCALE_HOST_ALLOCATOR picks, if it is not
    running under it yet: the same interpreter, arguments and environment plus
    `allocator_env()`. Call it first thing in a command-line entry point (never in a library
    call or a test: the process is replaced). A bad $NFSCALE_HOST_ALLOCATOR is an NFNetError."""
    choice = requested()
    if choice == "system" or active() or os.environ.get(REEXEC_MARK):
        return
    env = allocator_env(choice)
    if not env:
        return  # auto, and jemalloc is not installed
    os.environ.update(env)
    os.environ[REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def command_start() -> None:
    """`reexec_with_allocator()` for a `__main__` block: a bad $NFSCALE_HOST_ALLOCATOR prints
    one `error: ...` line and exits 2."""
    try:
        reexec_with_allocator()
    except NFNetError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


USAGE = "usage: python -m nfnet.host_allocator COMMAND [ARG ...]"


def main(argv: list[str] | None = None) -> int:
    """`python -m nfnet.host_allocator COMMAND ...`: run COMMAND on the allocator
    $NFSCALE_HOST_ALLOCATOR picks (the test suite: `... .venv/bin/python -m pytest -q`; a
    notebook server; a script of your own that trains in-process). Returns only on an error."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(f"error: no command given; {USAGE}", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(f"{USAGE}\nRuns COMMAND with jemalloc preloaded where installed "
              f"({ENV}=auto|jemalloc|system|PATH); see nfnet/host_allocator.py.")
        return 0
    try:
        env = {**os.environ, **allocator_env()}
    except NFNetError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        print(f"error: cannot run {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0  # not reached: the process is COMMAND now


if __name__ == "__main__":
    sys.exit(main())
