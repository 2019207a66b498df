"""Fault: the S3 endpoint goes down during an upload. The endpoint the client uses is a real proxy
process in front of moto_server (tests/fault_proxy.py); it is SIGKILLed once the first part of a
multipart upload has gone through, so the address stops answering mid-upload while moto keeps
what it received. boto3 retries, then the upload fails with an error naming the endpoint, the
bucket and the key; no object is left under the key (nor one whose checksum does not match), and
once the endpoint is back the same upload completes and verifies."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid

import boto3
import pytest

from ml.settings import Settings
from ml.storage import EndpointUnreachableError, Storage
from tests.faultkit import FaultProxy

MB = 1024 * 1024


def _wait_for_part(proxy: FaultProxy, key_path: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(
            r["method"] == "PUT" and r["path"] == key_path and "partNumber" in r["query"] and r["status"] == 200
            for r in proxy.requests()
        ):
            return True
        time.sleep(0.02)
    return False


def test_s3_endpoint_killed_mid_upload(s3_endpoint, tmp_path) -> None:
    direct = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket, key = f"t-{uuid.uuid4().hex[:10]}", "datasets/big/v1/blob.bin"
    direct.create_bucket(Bucket=bucket)
    local = tmp_path / "blob.bin"
    local.write_bytes(os.urandom(40 * MB))  # 5 parts of 8 MB
    digest = hashlib.sha256(local.read_bytes()).hexdigest()

    proxy = FaultProxy(s3_endpoint, tmp_path, health="/moto-api/")
    storage = Storage(Settings(s3_endpoint_url=proxy.url, s3_max_attempts=3))
    sent: list[str] = []
    storage.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.method))
    part_seen = threading.Event()

    def kill_after_first_part() -> None:
        if _wait_for_part(proxy, f"/{bucket}/{key}"):
            part_seen.set()
            proxy.kill()

    killer = threading.Thread(target=kill_after_first_part)
    killer.start()
    started = time.monotonic()
    with pytest.raises(EndpointUnreachableError) as failed:
        storage.put_file(local, f"s3://{bucket}/{key}")
    killer.join()
    assert part_seen.is_set(), "the endpoint went down mid-upload (after a part was stored)"
    message = str(failed.value)
    assert proxy.url in message and f"s3://{bucket}/{key}" in message
    forwarded = len(proxy.requests())
    assert len(sent) > forwarded, f"requests were retried after the endpoint went down ({len(sent)} sent)"
    print(f"failed after {time.monotonic() - started:.1f} s, {len(sent)} requests sent, {forwarded} answered")

    # what S3 holds: nothing under the key (an unfinished multipart upload is not an object)
    listed = direct.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert listed == []

    proxy = FaultProxy(s3_endpoint, tmp_path, health="/moto-api/", port=proxy.port)  # the endpoint is back
    try:
        assert storage.put_file(local, f"s3://{bucket}/{key}") == digest
        head = direct.head_object(Bucket=bucket, Key=key)
        assert head["Metadata"]["sha256"] == digest and head["ContentLength"] == 40 * MB
        assert storage.get_file(f"s3://{bucket}/{key}", tmp_path / "back.bin").read_bytes() == local.read_bytes()
        assert [o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    finally:
        proxy.close()
