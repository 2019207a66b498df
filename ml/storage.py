"""One storage API for local paths, ``file://`` URIs and ``s3://bucket/key`` (boto3).

Uploads carry a SHA-256 checksum that S3 verifies server-side (``ChecksumAlgorithm``) and
that is stored as object metadata, so downloads are verified end to end. boto3 retries
transient errors (``standard`` mode, ``settings.s3_max_attempts``). Failures surface as a
:class:`StorageError` subclass whose message names the endpoint, bucket and key.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from ml.settings import Settings

CHUNK = 8 * 1024 * 1024
_CRED_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
    "AccessDenied",
    "UnrecognizedClientException",
    "AuthFailure",
}


class StorageError(RuntimeError):
    """Base class of storage failures."""


class BucketNotFoundError(StorageError):
    pass


class CredentialsError(StorageError):
    pass


class EndpointUnreachableError(StorageError):
    pass


class ObjectNotFoundError(StorageError, FileNotFoundError):
    pass


class IntegrityError(StorageError):
    pass


class StorageFullError(StorageError, OSError):
    """A write ran out of space (disk or quota full, or the process's file-size limit)."""

    def __str__(self) -> str:  # the message, not the (errno, message) tuple RuntimeError would print
        return str(self.args[1]) if len(self.args) == 2 else super().__str__()


class LocalPathError(StorageError):
    """A local path the user gave cannot be written (read-only, no permission, too long, not a
    folder): the user's mistake to fix, not a service that is down."""


_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_USER_PATH = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ELOOP}
_UMASK = os.umask(0o022)
os.umask(_UMASK)
CHECKSUM_SUFFIX = ".sha256"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """The one atomic write: yields a temporary path next to ``path`` to write; when the block
    ends the file is flushed to disk and renamed over ``path`` in one step, so ``path`` is either
    the old file or the whole new one. On any failure the temporary file is removed and ``path``
    is untouched; an OSError becomes a :class:`StorageError` naming ``path``
    (:class:`StorageFullError` when the disk, a quota or the file-size limit is full)."""
    dst = Path(path)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(name, 0o666 & ~_UMASK)  # as open() would create it
    except OSError as exc:
        raise write_error(dst, exc) from exc
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as exc:
        raise write_error(dst, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_error(path: Path, exc: OSError) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    if exc.errno in _FULL:
        return StorageFullError(
            exc.errno,
            f"no space to write {path}: {exc.strerror} (disk, quota or file-size limit full); nothing was replaced",
        )
    if exc.errno in _USER_PATH:
        return LocalPathError(f"cannot write {path}: {exc.strerror or exc}; choose a folder you can write to")
    return StorageError(f"cannot write {path}: {exc}")


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[Path], None], checksum: bool = False) -> str:
    """Write ``data`` (bytes, or a function that writes the file at the path it is given) to
    ``path`` atomically (:func:`atomic_path`); returns the file's SHA-256. With ``checksum`` the
    digest is also stored beside it (``<path>.sha256``, written after the file) for
    :func:`read_verified`."""
    with atomic_path(path) as tmp:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data)
        digest = sha256_file(tmp)
    if checksum:
        with atomic_path(checksum_path(path)) as tmp:
            tmp.write_text(digest + "\n")
    return digest


def checksum_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}{CHECKSUM_SUFFIX}")


def verify_file(path: str | os.PathLike, expected: str | None = None) -> str:
    """Check ``path`` against ``expected`` (else its ``<path>.sha256`` written by
    :func:`atomic_write`); returns the digest. Raises :class:`ObjectNotFoundError` when the file
    is missing and :class:`IntegrityError` naming the path when the digest differs or there is
    none to compare with (a file that is truncated or not the one written is never taken as valid)."""
    p = Path(path)
    if not p.is_file():
        raise ObjectNotFoundError(f"no such file: {p}")
    if expected is None:
        side = checksum_path(p)
        if not side.is_file():
            raise IntegrityError(f"{p} has no checksum ({side.name}): it was not written whole by skinflow")
        expected = side.read_text().strip()
    digest = sha256_file(p)
    if digest != expected:
        raise IntegrityError(
            f"{p} does not match its checksum ({p.stat().st_size} bytes, sha256 {digest[:12]}..., "
            f"expected {expected[:12]}...): truncated or corrupt, not used"
        )
    return digest


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri}")
    return bucket, key


def local_path(uri: str | os.PathLike) -> Path:
    s = str(uri)
    return Path(s[7:] if s.startswith("file://") else s)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def join(base: str, *parts: str) -> str:
    """Join URI or path parts with ``/``."""
    return "/".join([str(base).rstrip("/"), *[str(p).strip("/") for p in parts if str(p)]])


class Storage:
    """Put/get/list/exists over local paths and S3, with the same semantics for both."""

    def __init__(self, settings: Settings | None = None, endpoint_url: str | None = None, client=None):
        if settings is None:
            from ml.settings import get_settings

            settings = get_settings()
        self.settings = settings
        self.endpoint_url = endpoint_url or settings.s3_endpoint_url
        self._client = client

    # --- S3 plumbing -------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(
                retries={"max_attempts": self.settings.s3_max_attempts, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            )
            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.settings.s3_region, config=cfg
            )
        return self._client

    def _where(self, bucket: str, key: str = "") -> str:
        return f"s3://{bucket}/{key} at {self.endpoint_url or 'AWS S3'}"

    def _translate(self, exc: Exception, bucket: str, key: str = "") -> StorageError:
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        where = self._where(bucket, key)
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
            return EndpointUnreachableError(f"S3 endpoint unreachable for {where}: {exc}")
        if isinstance(exc, NoCredentialsError):
            return CredentialsError(
                f"no AWS credentials found for {where}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return BucketNotFoundError(f"bucket '{bucket}' does not exist ({where})")
            if code in _CRED_CODES or code == "403":
                return CredentialsError(f"S3 rejected the credentials for {where}: {code}")
            if code in {"NoSuchKey", "404", "NotFound"}:
                return ObjectNotFoundError(f"no such object: {where}")
            return StorageError(f"S3 error {code} for {where}: {exc}")
        return StorageError(f"S3 failure for {where}: {exc}")

    def _call(self, bucket: str, key: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StorageError:
            raise
        except Exception as exc:  # botocore errors are translated, others re-raised
            if type(exc).__module__.startswith(("botocore", "boto3", "s3transfer")):
                raise self._translate(exc, bucket, key) from exc
            raise

    def _check_bucket(self, bucket: str) -> None:
        """Turn a missing bucket into a clear error (head_bucket reports it as a bare 404)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in {"404", "NoSuchBucket"}:
                raise BucketNotFoundError(f"bucket '{bucket}' does not exist ({self._where(bucket)})") from exc
            raise self._translate(exc, bucket) from exc
        except Exception as exc:
            raise self._translate(exc, bucket) from exc

    # --- public API --------------------------------------------------------------------
    def put_file(self, local: str | os.PathLike, uri: str) -> str:
        """Copy a local file to ``uri``; returns its SHA-256 (verified by S3 on upload)."""
        digest = sha256_file(local)
        if not is_s3(uri):
            dst = local_path(uri)
            if atomic_write(dst, lambda tmp: shutil.copyfile(local, tmp)) != digest:
                raise IntegrityError(f"copy of {local} to {dst} does not match its checksum")
            return digest
        bucket, key = split_s3(uri)
        self._check_bucket(bucket)
        extra = {"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": digest}}
        self._call(bucket, key, self.client.upload_file, str(local), bucket, key, ExtraArgs=extra)
        return digest

    def get_file(self, uri: str, local: str | os.PathLike) -> Path:
        """Copy ``uri`` to a local file (atomically), verifying the stored SHA-256 if any."""
        dst = Path(local)
        if not is_s3(uri):
            src = local_path(uri)
            if not src.is_file():
                raise ObjectNotFoundError(f"no such file: {src}")
            atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
            return dst
        bucket, key = split_s3(uri)

        def download(tmp: Path) -> None:
            head = self._call(bucket, key, self._head, bucket, key)
            self._call(bucket, key, self.client.download_file, bucket, key, str(tmp))
            expected = head.get("Metadata", {}).get("sha256")
            if expected and sha256_file(tmp) != expected:
                raise IntegrityError(f"download of {uri} does not match its stored sha256")

        atomic_write(dst, download)
        return dst

    def _head(self, bucket: str, key: str) -> dict:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in {"404", "NoSuchKey", "NotFound"}:
                self._check_bucket(bucket)
                raise ObjectNotFoundError(f"no such object: {self._where(bucket, key)}") from exc
            raise

    def put_bytes(self, data: bytes, uri: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if not is_s3(uri):
            atomic_write(local_path(uri), data)
            return digest
        bucket, key = split_s3(uri)
        self._check_bucket(bucket)
        self._call(
            bucket,
            key,
            self.client.put_object,
            Bucket=bucket,
            Key=key,
            Body=data,
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": digest},
        )
        return digest

    def get_bytes(self, uri: str) -> bytes:
        with self.open(uri) as f:
            return f.read()

    def open(self, uri: str, mode: str = "rb") -> IO[bytes]:
        """A readable binary stream (S3 bodies stream; nothing is loaded whole)."""
        if mode != "rb":
            raise ValueError("Storage.open supports mode='rb' only; use put_file/put_bytes to write")
        if not is_s3(uri):
            p = local_path(uri)
            if not p.is_file():
                raise ObjectNotFoundError(f"no such file: {p}")
            return open(p, "rb")
        bucket, key = split_s3(uri)
        self._call(bucket, key, self._head, bucket, key)
        return self._call(bucket, key, self.client.get_object, Bucket=bucket, Key=key)["Body"]

    def iter_chunks(self, uri: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with self.open(uri) as f:
            yield from iter(lambda: f.read(chunk_size), b"")

    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return local_path(uri).exists()
        bucket, key = split_s3(uri)
        try:
            self._call(bucket, key, self._head, bucket, key)
            return True
        except ObjectNotFoundError:
            return bool(self.list(uri.rstrip("/") + "/", limit=1))

    def list(self, prefix_uri: str, limit: int | None = None) -> list[str]:
        """Every file under ``prefix_uri`` (recursive), as full URIs/paths, sorted."""
        if not is_s3(prefix_uri):
            root = local_path(prefix_uri)
            if root.is_file():
                return [str(prefix_uri)]
            if not root.exists():
                return []
            base = str(prefix_uri).rstrip("/")
            files = sorted(join(base, p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file())
            return files[:limit] if limit else files
        bucket, prefix = split_s3(prefix_uri)
        self._check_bucket(bucket)
        out: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in self._call(bucket, prefix, list, pages):
            out.extend(f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", []))
            if limit and len(out) >= limit:
                return sorted(out)[:limit]
        return sorted(out)

    def delete(self, uri: str) -> None:
        if not is_s3(uri):
            local_path(uri).unlink(missing_ok=True)
            return
        bucket, key = split_s3(uri)
        self._call(bucket, key, self.client.delete_object, Bucket=bucket, Key=key)

    def sync_dir_up(self, local_dir: str | os.PathLike, uri: str) -> list[str]:
        """Upload every file under ``local_dir`` to ``uri`` keeping relative paths."""
        root = Path(local_dir)
        return [self._put_rel(p, root, uri) for p in sorted(root.rglob("*")) if p.is_file()]

    def _put_rel(self, path: Path, root: Path, uri: str) -> str:
        dst = join(uri, path.relative_to(root).as_posix())
        self.put_file(path, dst)
        return dst

    def sync_dir_down(self, uri: str, local_dir: str | os.PathLike) -> list[Path]:
        """Download every object under ``uri`` into ``local_dir`` keeping relative paths;
        files already present with the same size are kept."""
        base = uri.rstrip("/") + "/"
        out = []
        for src in self.list(base):
            dst = Path(local_dir) / src[len(base) :]
            if not (dst.exists() and is_s3(src) and self._same_size(src, dst)):
                self.get_file(src, dst)
            out.append(dst)
        return out

    def _same_size(self, uri: str, dst: Path) -> bool:
        bucket, key = split_s3(uri)
        return self._head(bucket, key)["ContentLength"] == dst.stat().st_size
