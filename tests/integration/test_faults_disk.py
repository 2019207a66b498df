"""Fault: the disk under the checkpoint or cache folder is full. A real small filesystem (a 200 KB
tmpfs mounted in a user namespace, where the machine allows it) or a real file-size limit on the
process (RLIMIT_FSIZE, SIGXFSZ ignored so writes fail with EFBIG) makes the writes fail: the error
names the path, nothing truncated is left where a reader would take it, and the files that were
there before stay valid. Truncated files put in place by hand are refused by the verified reads."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ml.data.cache import ImageCache, build_cache
from ml.data.manifest import build_manifest
from ml.storage import IntegrityError, StorageError, atomic_write, checksum_path
from ml.train.checkpoint import load_verified, save_atomic
from tests.conftest import REPO

LIMIT = 200_000  # bytes: a checkpoint of 2M floats (8 MB) or a 64 px cache of 80 images (~1 MB) cannot fit

# Runs inside the small filesystem (or under the file-size limit); prints what it saw as JSON.
SCRIPT = r"""
import json, os, sys, torch
from pathlib import Path
from ml.storage import StorageError
from ml.train.checkpoint import load_verified, save_atomic
from ml.data.cache import build_cache
from ml.data.manifest import Manifest

small, data = Path(sys.argv[1]), Path(sys.argv[2])
out = {}
ckpt = small / "ckpt" / "last.pt"
ckpt.parent.mkdir(parents=True, exist_ok=True)
save_atomic({"epoch": 1, "w": torch.arange(100.0)}, ckpt)             # fits
try:
    save_atomic({"epoch": 2, "w": torch.randn(2_000_000)}, ckpt)     # 8 MB: does not
    out["ckpt_error"] = None
except StorageError as exc:
    out["ckpt_error"] = [type(exc).__name__, str(exc)]
out["ckpt_files"] = sorted(p.name for p in ckpt.parent.iterdir())
out["ckpt_epoch_read_back"] = load_verified(ckpt)["epoch"]
manifest = Manifest.load(data / "manifest.csv")
try:
    build_cache(manifest, 64, small / "cache")
    out["cache_error"] = None
except StorageError as exc:
    out["cache_error"] = [type(exc).__name__, str(exc)]
out["cache_entries"] = sorted(str(p.relative_to(small / "cache")) for p in (small / "cache").rglob("*"))
out["free_after"] = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
print("RESULT " + json.dumps(out))
"""


def _tmpfs_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt || mount -t tmpfs -o size=64k tmpfs /tmp",
        ],
        capture_output=True,
        timeout=20,
    )
    return probe.returncode == 0


def _fsize_limit() -> None:  # in the child, before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _run_full(mode: str, small: Path, data: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", SCRIPT, str(small), str(data)]
    small.mkdir(parents=True, exist_ok=True)
    if mode == "tmpfs":
        shell = f'mount -t tmpfs -o size={LIMIT} tmpfs "$0" && exec "$@"'
        proc = subprocess.run(
            ["unshare", "-rm", "sh", "-c", shell, str(small), *cmd],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    else:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, preexec_fn=_fsize_limit)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, synth_small) -> Path:
    out = tmp_path_factory.mktemp("disk-data")
    build_manifest(str(synth_small), progress=False).save(out / "manifest.csv")
    return out


@pytest.mark.parametrize("mode", ["tmpfs", "fsize"])
def test_a_full_disk_names_the_path_and_leaves_no_partial_checkpoint_or_cache(mode, dataset, tmp_path) -> None:
    if mode == "tmpfs" and not _tmpfs_works():
        pytest.skip("no unprivileged mount namespaces here: the file-size-limit case covers the fault")
    small = tmp_path / "small"
    seen = _run_full(mode, small, dataset)

    kind, message = seen["ckpt_error"]
    assert kind == "StorageFullError" and str(small / "ckpt" / "last.pt") in message
    assert seen["ckpt_files"] == ["last.pt", "last.pt.sha256"], "no temporary file left behind"
    assert seen["ckpt_epoch_read_back"] == 1, "the checkpoint that was there stays, whole and verified"

    kind, message = seen["cache_error"]
    assert kind == "StorageFullError" and str(small / "cache") in message
    version = json.loads((dataset / "manifest.json").read_text())["version"]
    assert seen["cache_entries"] == [version], "no cache folder nor temporary folder left behind"
    if mode == "tmpfs":
        assert seen["free_after"] > LIMIT // 2, "the partial files were removed, the space is free again"


def test_a_truncated_checkpoint_is_never_loaded(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 3, "w": torch.randn(10_000)}, path)
    assert load_verified(path)["epoch"] == 3
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what a copy cut short leaves
    with pytest.raises(IntegrityError, match=str(path)):
        load_verified(path)
    path.write_bytes(data)
    checksum_path(path).unlink()  # a file that was not written whole by save_atomic
    with pytest.raises(IntegrityError, match="no checksum"):
        load_verified(path)


def test_a_truncated_cache_is_rebuilt_by_the_build_and_refused_by_open(dataset, tmp_path) -> None:
    from ml.data.manifest import Manifest

    manifest = Manifest.load(dataset / "manifest.csv")
    cache = build_cache(manifest, 16, tmp_path)
    images = cache.path / "images.npy"
    good = images.read_bytes()
    del cache
    images.write_bytes(good[:-100])  # truncated in place
    with pytest.raises(IntegrityError, match="images.npy"):
        ImageCache.open(images.parent)
    decoded: list[str] = []
    rebuilt = build_cache(manifest, 16, tmp_path, on_decode=decoded.append)
    assert len(decoded) == len(manifest.records), "rebuilt, not reused"
    assert images.read_bytes() == good and rebuilt.images.shape[0] == len(manifest.records)


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary_file(tmp_path) -> None:
    path = tmp_path / "manifest.csv"
    atomic_write(path, b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"new but cut")
        raise OSError(28, "No space left on device")

    with pytest.raises(StorageError, match=str(path)):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


# Validation with its report folder on the small filesystem: Data Docs need more than it holds.
VALIDATE = r"""
import json, sys
from pathlib import Path
from ml.data.manifest import Manifest
from ml.quality.features import compute_features
from ml.quality.validation import load_policy, validate_features
from ml.storage import StorageError

small, data = Path(sys.argv[1]), Path(sys.argv[2])
manifest = Manifest.load(data / "manifest.csv")
features = compute_features(manifest.all_files(), workers=1)
report = validate_features(features, load_policy(), manifest.expected_classes, small / "v" / "data_docs")
out = {"error": report.data_docs_error, "index": str(report.data_docs_index), "outcomes": len(report.results)}
out["left"] = sorted(str(p.relative_to(small)) for p in small.rglob("*"))
import os
page = 4096  # tmpfs hands out whole pages: leave exactly the pages the CSV needs, none for its sidecar
csv_pages = -(-len(manifest.records.to_csv(index=False).encode()) // page)
free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
(small / "filler").write_bytes(b"x" * (free - csv_pages * page))
try:
    manifest.save(small / "m.csv")
    out["save_error"] = None
except StorageError as exc:
    out["save_error"] = [type(exc).__name__, str(exc)]
out["after_save"] = sorted(p.name for p in small.iterdir())
print("RESULT " + json.dumps(out))
"""


def test_validation_on_a_full_disk_keeps_its_findings_and_leaves_no_half_written_report(dataset, tmp_path) -> None:
    if not _tmpfs_works():
        pytest.skip("no unprivileged mount namespaces here: Data Docs pages are each below a file-size limit")
    small = tmp_path / "small"
    small.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    shell = f'mount -t tmpfs -o size={LIMIT} tmpfs "$0" && exec "$@"'
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell, str(small), sys.executable, "-c", VALIDATE, str(small), str(dataset)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT ") :])
    assert seen["error"].startswith(f"no space to write {small / 'v' / 'data_docs'}")  # the path, in words
    assert seen["index"] == "None" and seen["outcomes"] > 20  # every check was still run and reported
    assert seen["left"] == ["v"], "no partial Data Docs and no temporary folder left behind"
    kind, message = seen["save_error"]
    assert kind == "StorageFullError" and "m.json" in message and not message.startswith("(")
    assert "m.csv" not in seen["after_save"], "no manifest CSV left without its sidecar"


def test_skinflow_validate_on_a_full_disk_prints_its_findings_names_the_path_and_exits_2(synth_small, tmp_path) -> None:
    if not _tmpfs_works():
        pytest.skip("no unprivileged mount namespaces here: Data Docs pages are each below a file-size limit")
    small, home = tmp_path / "small", tmp_path / "home"
    small.mkdir()
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "SKINFLOW_DATA_ROOT": str(tmp_path / "data"),
        "OMP_NUM_THREADS": "1",
    }
    skinflow = str(Path(sys.executable).parent / "skinflow")
    shell = f'mount -t tmpfs -o size={LIMIT} tmpfs "$0" && exec "$@"'
    proc = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            shell,
            str(small),
            skinflow,
            "validate",
            str(synth_small),
            "--out",
            str(small / "v"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "duplicates_leakage label_conflicts" in proc.stdout  # the findings, printed all the same
    assert f"error: report pages not written: no space to write {small / 'v'}" in proc.stderr
    assert "Traceback" not in proc.stderr and "(28," not in proc.stderr
