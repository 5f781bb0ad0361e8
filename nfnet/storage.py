"""Where a path or URI lives: the pyarrow filesystem that opens it, and checks before work.

Every reader and writer of a `gs://` path in nfscale (Parquet shards, the ledger, Ray's
experiment storage) gets its filesystem from `filesystem(uri)`; orbax and the trainer's
TensorBoard events open `gs://` themselves (through etils/gcsfs, tensorstore and
google-cloud-storage) after `prepare(uri)`.

Real GCS: credentials are Google's application defaults (`gcloud auth application-default
login`, `GOOGLE_APPLICATION_CREDENTIALS`, or a VM's service account).

A GCS emulator: set `STORAGE_EMULATOR_HOST=http://127.0.0.1:4443` (the variable
google-cloud-storage and gcsfs read). The clients that do not read it are pointed at it
here: pyarrow gets `GcsFileSystem(endpoint_override=..., scheme="http", anonymous=True)`
(google-cloud-cpp would otherwise look for credentials and retry for minutes), and
`prepare` sets tensorstore's `TENSORSTORE_GCS_HTTP_URL` and a placeholder
`GOOGLE_AUTH_TOKEN_FOR_TESTING` (orbax writes arrays through tensorstore) unless they
are set already.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta

import pyarrow as pa
import pyarrow.fs as pafs

from nfnet.errors import NFNetError

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# GCS bucket names: 3-63 lowercase letters, digits, '-', '_' and '.', starting and ending alphanumeric.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
# An emulator on this machine answers at once; a missing one should not be retried for minutes.
_EMULATOR_RETRY = timedelta(seconds=5)
_CREDENTIALS_HINT = ("check credentials (gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS) "
                     f"or, for an emulator, {EMULATOR_ENV}")


def is_uri(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names a remote location (`gs://...`) rather than a local path."""
    return "://" in os.fspath(path)


def emulator_url() -> str | None:
    """The GCS emulator's base URL from $STORAGE_EMULATOR_HOST (`http://` added when missing), or None."""
    host = os.environ.get(EMULATOR_ENV, "").strip().rstrip("/")
    if not host:
        return None
    return host if "://" in host else f"http://{host}"


def split_gcs(uri: str) -> tuple[str, str]:
    """(bucket, object path) of a `gs://bucket/path` URI; a malformed one is an NFNetError."""
    if not uri.startswith("gs://"):
        raise NFNetError(f"{uri} is not a gs:// URI; write gs://BUCKET/PATH")
    bucket, _, path = uri[len("gs://"):].partition("/")
    if not bucket:
        raise NFNetError(f"{uri} names no bucket; write gs://BUCKET/PATH")
    if not _BUCKET.match(bucket):
        raise NFNetError(f"{uri}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, "
                         "'-', '_' or '.'); write gs://BUCKET/PATH")
    return bucket, path.strip("/")


def mistyped_uri(path: str) -> str | None:
    """Why a local-looking path is really a mistyped bucket URI (`gs:/bucket`, `gs:bucket`), or None."""
    scheme = re.match(r"^(gs|gcs|s3):(?!//)", path)
    if scheme:
        return f"{path} looks like a bucket URI with a slash missing (write {scheme.group(1)}://BUCKET/PATH)"
    return None


def prepare(uri: str) -> None:
    """Point the clients that do not read $STORAGE_EMULATOR_HOST at the emulator, when one is set.

    Called before orbax touches a `gs://` path. Variables already set are left alone.
    """
    url = emulator_url()
    if url is None or not uri.startswith("gs://"):
        return
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # any token: the emulator checks none
    # gcsfs probes each bucket for a hierarchical namespace with credentials an emulator has not;
    # the probe only logs a warning, once per bucket, before using the plain client.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def filesystem(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI.

    Local paths become absolute; `gs://` goes to the emulator when $STORAGE_EMULATOR_HOST
    is set, else to GCS with the application-default credentials; other URIs are
    whatever pyarrow opens. A malformed URI or one pyarrow cannot open is an NFNetError.
    """
    uri = os.fspath(uri)
    if not is_uri(uri):
        problem = mistyped_uri(uri)
        if problem:
            raise NFNetError(problem)
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri)).replace(os.sep, "/")
    if uri.startswith("gs://"):
        bucket, path = split_gcs(uri)
        url = emulator_url()
        if url is not None:
            prepare(uri)
            scheme, _, endpoint = url.partition("://")
            fs = pafs.GcsFileSystem(endpoint_override=endpoint, scheme=scheme, anonymous=True,
                                    retry_time_limit=_EMULATOR_RETRY)
            return fs, f"{bucket}/{path}".rstrip("/")
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise NFNetError(f"cannot open {uri}: {_first_line(e)}; check the URI scheme and credentials") from e


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """The URI of `path` inside `fs` (the inverse of `filesystem`): `gs://bucket/path`, or a local path."""
    scheme = {"gcs": "gs", "s3": "s3"}.get(fs.type_name)
    return f"{scheme}://{path}" if scheme else path


def _first_line(error: BaseException) -> str:
    """An Arrow/google-cloud-cpp error's message without its multi-line `error_info` detail."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"\s*error_info=\{.*", "", text)[:300]


def uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be used as a directory to read and write, or None. Creates nothing.

    For `gs://`: the bucket must exist and the path must not be an object (a file). Other
    schemes are left to their filesystem.
    """
    try:
        fs, path = filesystem(uri)
    except NFNetError as e:
        return str(e)
    if not uri.startswith("gs://"):
        return None
    bucket = path.split("/", 1)[0]
    where = f"the emulator at {emulator_url()}" if emulator_url() else "GCS"
    try:
        bucket_info = fs.get_file_info(bucket)
        if bucket_info.type == pafs.FileType.NotFound:
            return (f"{uri}: bucket gs://{bucket} does not exist on {where}; create it "
                    f"(gcloud storage buckets create gs://{bucket}) or fix the path")
        if path != bucket and fs.get_file_info(path).type == pafs.FileType.File:
            return f"{uri} is an object (a file), not a directory; pass a directory path"
    except (pa.ArrowException, OSError) as e:
        return f"cannot reach {uri} on {where}: {_first_line(e)}; {_CREDENTIALS_HINT}"
    return None


def check_uri(uri: str, flag: str) -> None:
    """Raise one NFNetError line naming `flag` and `uri` when `uri_problem` finds one."""
    problem = uri_problem(uri)
    if problem is not None:
        raise NFNetError(f"{flag} {problem}")
