"""The blob store: uploaded photos and results, addressed by key.

A small interface so that an S3-compatible store (`S3BlobStore`, FLATLAY_BLOB_URL=s3://…)
stands in for the local filesystem (distributed mode with several machines) without the
API or the workers noticing.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from service.settings import Settings


# Names of the files LocalBlobStore writes before renaming them into place; a process killed
# in between leaves one behind (delete_temp_files removes them).
TEMP_PREFIX = ".tmp-"


class BlobNotFound(KeyError):
    pass


class StorageError(OSError):
    """The blob store failed a write or a read (disk full, read-only, an S3 5xx or an
    unreachable endpoint): the store is at fault, not the request or the job. The worker
    retries the attempt; the API answers 503 `storage_unavailable`."""

    code = "storage_unavailable"


class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_temp_files(self, prefix: str) -> int: ...
    def ping(self) -> None: ...


def _checked_key(key: str) -> PurePosixPath:
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(part in ("", ".", "..") for part in path.parts):
        raise ValueError(f"invalid blob key {key!r}")
    return path


class LocalBlobStore:
    """Blobs as files under one root; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_checked_key(key).parts)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            self._write(path, data)
        except StorageError:
            raise
        except OSError as exc:  # ENOSPC, EROFS, EDQUOT, EACCES, EIO...
            raise StorageError(f"could not write blob {key}: {exc.strerror or exc}") from exc

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        for _ in range(3):  # a delete may prune the folder between mkdir and mkstemp
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
                break
            except FileNotFoundError:
                continue
        else:
            raise StorageError(f"could not create a file in {path.parent}")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"could not read blob {key}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune(path.parent)

    def _prune(self, start: Path) -> None:
        # Folders left empty (a job's outputs-a1/) go too, up to the root.
        for folder in (start, *start.parents):
            if folder == self.root or self.root not in folder.parents:
                break
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone): stop here
                break

    def delete_temp_files(self, prefix: str) -> int:
        """Remove the temp files under `prefix` (a folder of keys) that writes killed before
        their rename left behind; returns how many. Only for keys that nothing writes any
        more (a job that has ended): a write in progress would lose its temp file and fail."""
        top = self._path(prefix.rstrip("/"))
        removed = 0
        # os.walk, not rglob: a folder pruned meanwhile is skipped rather than raising.
        for folder, _, names in os.walk(top):
            temp = [name for name in names if name.startswith(TEMP_PREFIX)]
            for name in temp:
                Path(folder, name).unlink(missing_ok=True)
            if temp:
                removed += len(temp)
                self._prune(Path(folder))
        return removed

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"blob directory {self.root} is not writable")


class S3BlobStore:
    """Blobs as objects in an S3-compatible bucket (AWS, MinIO, Ceph…), under a key prefix.

    Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    a profile, an instance role); the endpoint from FLATLAY_S3_ENDPOINT_URL for non-AWS
    servers. The bucket must exist.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._s3 = boto3.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None,
            config=Config(retries={"max_attempts": 3, "mode": "standard"},
                          connect_timeout=5, read_timeout=60),
        )

    def _key(self, key: str) -> str:
        checked = str(_checked_key(key))
        return f"{self.prefix}/{checked}" if self.prefix else checked

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        s3_key = self._key(key)
        try:
            self._s3.put_object(Bucket=self.bucket, Key=s3_key, Body=data)
        except (ClientError, BotoCoreError) as exc:  # after botocore's own retries
            raise StorageError(f"could not write blob {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise BlobNotFound(key) from None
            raise StorageError(f"could not read blob {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"could not read blob {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return False
            raise

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_temp_files(self, prefix: str) -> int:
        # A PUT is atomic: an interrupted one leaves no object behind.
        return 0

    def ping(self) -> None:
        self._s3.head_bucket(Bucket=self.bucket)


# Where /readyz writes its probe blobs (deleted at once; not an asset key).
PROBE_PREFIX = ".probe"


def probe_write(store: BlobStore) -> None:
    """Write, read back and delete a small blob; raises StorageError (or what the store
    raised) when it cannot. `ping` only says the store is there: a full disk or an S3
    endpoint that fails every PUT passes it."""
    key = f"{PROBE_PREFIX}/{uuid.uuid4().hex}"
    store.put(key, b"flatlay readiness probe")
    try:
        if store.get(key) != b"flatlay readiness probe":
            raise StorageError("the probe blob read back different bytes")
    finally:
        store.delete(key)


def make_blob_store(settings: Settings) -> BlobStore:
    """The blob store the settings name: `blob_url` s3://bucket/prefix, else local files."""
    url = settings.blob_url
    if url:
        parts = urlsplit(url)
        return S3BlobStore(parts.netloc, parts.path, settings.s3_endpoint_url,
                           settings.s3_region)
    return LocalBlobStore(settings.resolved_blob_dir)
