"""Monitor batches on S3 (a real moto endpoint): an SD-198 prefix and an unlabelled prefix."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ml.data.synth import LABELS
from ml.monitor.batch import load_batch


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_s3_prefixes_as_batches(s3, tmp_path, monkeypatch):
    storage, bucket = s3
    monkeypatch.setattr(storage.settings, "data_root", tmp_path)
    for i in range(2):
        storage.put_bytes(_jpeg(i), f"{bucket}/sd198/Acne_Vulgaris/a{i}.jpg")
    storage.put_bytes(_jpeg(5), f"{bucket}/sd198/Unknown_Rash/u0.jpg")
    storage.put_bytes(b"\xd0\xcf\x11\xe0junk", f"{bucket}/sd198/Acne_Vulgaris/Thumbs.db")
    batch = load_batch(f"{bucket}/sd198", "sd198_to_10", list(LABELS), storage=storage)
    assert sorted(batch.records["label"]) == ["", "acne", "acne"]
    assert batch.out_of_map == {"Unknown_Rash": 1}
    assert batch.bad["reason"].tolist() == ["not_an_image"]
    assert all(p.startswith(bucket) for p in batch.records["path"])
    assert all(str(tmp_path) in p for p in batch.records["local_path"])  # materialised for decoding
    for i in range(3):
        storage.put_bytes(_jpeg(10 + i), f"{bucket}/flat/img{i}.jpg")
    flat = load_batch(f"{bucket}/flat", storage=storage)
    assert flat.layout == "unlabelled" and len(flat.records) == 3 and flat.bad.empty
