"""Object stores a partition is written to: an S3-compatible bucket (Backblaze B2, AWS S3,
MinIO) through boto3, or a local directory with the same key layout. Writes are invisible until
committed and hashed (sha256) as they stream; S3 parts carry a Content-MD5 the server checks."""

import base64
import hashlib
import io
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO


@dataclass(frozen=True)
class StoredObject:
    """An object as written or found: ``key``, ``size`` in bytes, ``sha256`` (hex, of the whole
    object; None when not computed) and ``etag`` (the server's ETag; None for a local store)."""

    key: str
    size: int
    sha256: str | None = None
    etag: str | None = None


class _Sink(io.RawIOBase):
    """Write-only stream for one new object; :meth:`commit` makes it visible, :meth:`abort`
    discards it. Hashes the bytes (sha256) as they pass."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self._sha = hashlib.sha256()
        self._pos = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self._pos += len(view)
        self._write(view)
        return len(view)

    def _write(self, view: memoryview) -> None:
        raise NotImplementedError

    def commit(self) -> StoredObject:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


def _md5_b64(data) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class _S3Sink(_Sink):
    """Buffers ``part_bytes``, then continues as a multipart upload; every PUT carries a
    Content-MD5 the server checks. An object smaller than one part is a single PUT."""

    def __init__(self, client, bucket: str, key: str, part_bytes: int) -> None:
        super().__init__(key)
        self._client, self._bucket, self._part_bytes = client, bucket, part_bytes
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []

    def _write(self, view: memoryview) -> None:
        self._buf += view
        if len(self._buf) >= self._part_bytes:
            self._upload_part()

    def _upload_part(self) -> None:
        if self._upload_id is None:
            self._upload_id = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self.key,
                ContentType="application/vnd.apache.parquet")["UploadId"]
        number = len(self._parts) + 1
        body = bytes(self._buf)
        self._buf.clear()
        etag = self._client.upload_part(Bucket=self._bucket, Key=self.key, PartNumber=number,
                                        UploadId=self._upload_id, Body=body,
                                        ContentMD5=_md5_b64(body))["ETag"]
        self._parts.append({"PartNumber": number, "ETag": etag})

    def commit(self) -> StoredObject:
        if self._upload_id is None:
            body = bytes(self._buf)
            etag = self._client.put_object(Bucket=self._bucket, Key=self.key, Body=body,
                                           ContentMD5=_md5_b64(body),
                                           ContentType="application/vnd.apache.parquet")["ETag"]
        else:
            if self._buf:
                self._upload_part()
            etag = self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self.key, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts})["ETag"]
        return StoredObject(self.key, self._pos, self._sha.hexdigest(), etag)

    def abort(self) -> None:
        self._buf.clear()
        if self._upload_id is not None:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self.key,
                                                UploadId=self._upload_id)


class _LocalSink(_Sink):
    """Writes ``<path>.<random>.tmp`` and renames it over ``path`` on commit (after fsync)."""

    def __init__(self, path: Path, key: str) -> None:
        super().__init__(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._fh = open(self._tmp, "wb")

    def _write(self, view: memoryview) -> None:
        self._fh.write(view)

    def commit(self) -> StoredObject:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self._path)
        return StoredObject(self.key, self._pos, self._sha.hexdigest())

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


class _S3RangeFile(io.RawIOBase):
    """Read-only, seekable view of an S3 object that fetches byte ranges on demand (what
    pyarrow needs to read a Parquet footer or single row groups without the whole object)."""

    def __init__(self, client, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self._client, self._bucket, self._key, self._size = client, bucket, key, size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        body = self._client.get_object(Bucket=self._bucket, Key=self._key,
                                       Range=f"bytes={self._pos}-{self._pos + n - 1}")["Body"]
        data = body.read()
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


class ObjectStore:
    """Where partitions are written. ``url`` names it in manifests (``s3://bucket`` or
    ``file:///dir``); keys are '/'-separated paths relative to it."""

    url: str

    def writer(self, key: str, part_bytes: int) -> _Sink:
        """A sink for a new object at ``key`` (invisible until ``commit()``)."""
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        """Write a small object in one atomic step."""
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        raise NotImplementedError

    def head(self, key: str) -> StoredObject | None:
        """Size and ETag of an object (sha256 None), or None when it does not exist."""
        raise NotImplementedError

    def open(self, key: str, size: int) -> BinaryIO:
        """A seekable binary reader of an object of ``size`` bytes."""
        raise NotImplementedError

    def sha256(self, key: str) -> str:
        """sha256 (hex) of the object's bytes, read in full."""
        raise NotImplementedError

    def list_keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder path ending in '/')."""
        raise NotImplementedError

    def delete(self, keys: list[str]) -> None:
        """Delete objects (missing ones are ignored)."""
        raise NotImplementedError


class S3Store(ObjectStore):
    """An S3-compatible bucket through a boto3 client (Backblaze B2, AWS S3, MinIO)."""

    def __init__(self, client, bucket: str) -> None:
        self.client, self.bucket = client, bucket
        self.url = f"s3://{bucket}"

    def writer(self, key: str, part_bytes: int) -> _Sink:
        return _S3Sink(self.client, self.bucket, key, part_bytes)

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        etag = self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                      ContentMD5=_md5_b64(data),
                                      ContentType="application/json")["ETag"]
        return StoredObject(key, len(data), hashlib.sha256(data).hexdigest(), etag)

    def _missing(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        return code in ("404", "NoSuchKey", "NotFound")

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.ClientError as exc:
            if self._missing(exc):
                return None
            raise

    def head(self, key: str) -> StoredObject | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if self._missing(exc):
                return None
            raise
        return StoredObject(key, head["ContentLength"], None, head["ETag"])

    def open(self, key: str, size: int) -> BinaryIO:
        return io.BufferedReader(_S3RangeFile(self.client, self.bucket, key, size),
                                 buffer_size=1 << 20)

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        for chunk in body.iter_chunks(chunk_size=1 << 20):
            digest.update(chunk)
        return digest.hexdigest()

    def list_keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                      Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})


class LocalStore(ObjectStore):
    """A local directory with the same layout (the default when no bucket is configured)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def writer(self, key: str, part_bytes: int) -> _Sink:
        return _LocalSink(self._path(key), key)

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        sink = _LocalSink(self._path(key), key)
        sink.write(data)
        return sink.commit()

    def get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        return StoredObject(key, path.stat().st_size) if path.is_file() else None

    def open(self, key: str, size: int) -> BinaryIO:
        return open(self._path(key), "rb")

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with open(self._path(key), "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def list_keys(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*")
                      if p.is_file())

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)


def make_store(bucket: str | None, client_factory: Callable[[], Any],
               local_dir: str) -> ObjectStore:
    """The configured store: an :class:`S3Store` on ``bucket`` (boto3 client from
    ``client_factory()``), or a :class:`LocalStore` in ``local_dir`` when no bucket is set."""
    return S3Store(client_factory(), bucket) if bucket else LocalStore(local_dir)
