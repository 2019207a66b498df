"""Storage against a real S3 HTTP endpoint (moto_server on 127.0.0.1) and local disk."""

from __future__ import annotations

import hashlib
import os

import pytest

from ml.settings import Settings
from ml.storage import (
    BucketNotFoundError,
    CredentialsError,
    EndpointUnreachableError,
    IntegrityError,
    ObjectNotFoundError,
    Storage,
)
from tests.conftest import VENV_BIN, Service, free_port


def _roundtrip(storage: Storage, root: str, tmp_path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(payload)
    digest = storage.put_file(src, f"{root}/a/b/src.bin")
    assert digest == hashlib.sha256(payload).hexdigest()
    storage.put_bytes(b"hello", f"{root}/a/c.txt")
    assert storage.exists(f"{root}/a/b/src.bin")
    assert storage.exists(f"{root}/a")  # a "folder" exists when something lies below it
    assert not storage.exists(f"{root}/nope.txt")
    assert storage.list(f"{root}/a") == sorted([f"{root}/a/b/src.bin", f"{root}/a/c.txt"])
    out = storage.get_file(f"{root}/a/b/src.bin", tmp_path / "dl" / "x.bin")
    assert out.read_bytes() == payload
    assert storage.get_bytes(f"{root}/a/c.txt") == b"hello"
    chunks = list(storage.iter_chunks(f"{root}/a/b/src.bin", chunk_size=1024 * 1024))
    assert len(chunks) == 4 and b"".join(chunks) == payload
    with pytest.raises(ObjectNotFoundError):
        storage.get_bytes(f"{root}/missing")


def test_s3_roundtrip_through_real_endpoint(s3, tmp_path):
    storage, bucket = s3
    _roundtrip(storage, bucket, tmp_path)
    # the object really is on the endpoint, with the checksum S3 verified on upload
    b = bucket[5:]
    head = storage.client.head_object(Bucket=b, Key="a/c.txt", ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_local_paths_have_the_same_semantics(tmp_path):
    storage = Storage(Settings())
    _roundtrip(storage, str(tmp_path / "root"), tmp_path)
    _roundtrip(Storage(Settings()), "file://" + str(tmp_path / "root2"), tmp_path)


def test_sync_dirs_up_and_down(s3, tmp_path):
    storage, bucket = s3
    src = tmp_path / "tree"
    for rel in ["x/1.txt", "x/y/2.txt", "3.txt"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    uris = storage.sync_dir_up(src, f"{bucket}/tree")
    assert len(uris) == 3
    got = storage.sync_dir_down(f"{bucket}/tree", tmp_path / "back")
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in got) == ["3.txt", "x/1.txt", "x/y/2.txt"]
    assert (tmp_path / "back/x/y/2.txt").read_text() == "x/y/2.txt"


def test_download_detects_corruption(s3, tmp_path):
    storage, bucket = s3
    b = bucket[5:]
    # an object whose stored checksum metadata does not match its bytes (e.g. tampered)
    storage.client.put_object(Bucket=b, Key="bad.bin", Body=b"abc", Metadata={"sha256": "0" * 64})
    with pytest.raises(IntegrityError, match="sha256"):
        storage.get_file(f"{bucket}/bad.bin", tmp_path / "bad.bin")
    assert not (tmp_path / "bad.bin").exists()  # nothing half-written is left


def test_missing_bucket_is_named(s3, tmp_path):
    storage, _ = s3
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(BucketNotFoundError, match="no-such-bucket"):
        storage.put_file(f, "s3://no-such-bucket/f.txt")
    with pytest.raises(BucketNotFoundError):
        storage.list("s3://no-such-bucket/")


def test_unreachable_endpoint_is_named(tmp_path, aws_env):
    url = f"http://127.0.0.1:{free_port()}"
    storage = Storage(Settings(s3_endpoint_url=url, s3_max_attempts=2))
    with pytest.raises(EndpointUnreachableError, match="127.0.0.1"):
        storage.get_bytes("s3://bucket/key")


def test_bad_credentials_are_reported(tmp_path, aws_env, monkeypatch):
    """A moto server with authentication on rejects an unknown access key."""
    port = free_port()
    svc = Service(
        "moto-auth",
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}/moto-api/",
        tmp_path,
        env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"},
    )
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        storage = Storage(Settings(s3_endpoint_url=f"http://127.0.0.1:{port}", s3_max_attempts=1))
        with pytest.raises(CredentialsError, match="credentials"):
            storage.list("s3://some-bucket/")
    finally:
        svc.close()
