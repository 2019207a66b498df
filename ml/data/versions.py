"""New dataset versions written once and atomically (curated copies, synthetic sets): never into
a source dataset, never half-written."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_version(dest: str | Path, marker: str, build: Callable[[Path], None], kind: str = "dataset") -> bool:
    """Run ``build(tmp)`` in a hidden sibling folder of ``dest`` and rename it into place.

    ``marker`` (e.g. the version's manifest) is the file a complete version holds: a ``dest``
    with it is reused as it is (returns False; nothing is built), a ``dest`` without it is
    refused (FileExistsError naming ``kind``). Returns True when this call wrote the version
    (False also when another run finished the same version first)."""
    dest = Path(dest).resolve()
    if (dest / marker).is_file():
        return False
    if dest.exists():
        raise FileExistsError(f"{dest} exists without {marker}: not a {kind} version, remove it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        build(tmp)
        try:
            tmp.rename(dest)
        except OSError:  # another run finished the same version first
            if not (dest / marker).is_file():
                raise
            shutil.rmtree(tmp)
            return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True
