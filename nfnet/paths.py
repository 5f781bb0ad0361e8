"""Checks of the local directories a run will write, made before any work starts."""

from __future__ import annotations

import os

from nfnet.storage import mistyped_uri


def dir_problem(path: str) -> str | None:
    """Why `path` cannot be used (or created) as a writable directory, or None.

    URIs (`gs://...`) are checked by `nfnet.storage.uri_problem`; a mistyped one
    (`gs:/bucket`) is a problem here rather than a local directory named `gs:`. Nothing
    is created: the nearest existing ancestor must be a writable directory.
    """
    if "://" in path:
        return None
    mistyped = mistyped_uri(path)
    if mistyped:
        return mistyped
    target = os.path.abspath(os.path.expanduser(path))
    probe = target
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        where = "is a file" if probe == target else f"lies under {probe}, which is a file"
        return f"{path} {where}, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{path} cannot be written ({probe} is not writable by this user)"
    return None
