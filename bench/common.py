"""Helpers shared by the benchmarks: machine description, timing, small formatting utilities.

Pure standard library + torch; nothing here changes global state except `configure_torch`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (affinity), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def load_remark(*loads: list[float] | None, cores: int) -> str:
    """A plain statement of whether the machine was quiet, from 1-min load averages (start, end, ...).

    The bench itself counts: a 1-min load above the usable cores means other work competed for them.
    Loads that could not be read (None) are said to be unknown rather than guessed."""
    known = [load[0] for load in loads if load]
    if not known:
        return "load average unknown (no /proc/loadavg): whether other jobs ran is not known"
    peak = max(known)
    if peak > cores:
        return (
            f"the machine was shared with other jobs while measuring (1-min load up to {peak:.1f} on {cores} "
            "cores): absolute times are upper bounds, compare rows within this run"
        )
    return f"nothing else competed for the cores (1-min load at most {peak:.1f} on {cores} cores)"


def git_commit(repo: Path = REPO) -> str:
    """HEAD's commit (read-only `git rev-parse`), or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def configure_torch(threads: int | None) -> dict[str, Any]:
    """Set torch's intra-op threads (default: all usable cores) and flush-denormal; report both."""
    import torch

    flush = torch.set_flush_denormal(True)  # before any thread pool starts: workers inherit the FP mode
    torch.set_num_threads(threads or usable_cores())
    return {"threads": torch.get_num_threads(), "flush_denormal": bool(flush)}


def machine_description(torch_settings: dict[str, Any]) -> dict[str, Any]:
    import numpy
    import torch

    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average_at_start": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch_settings.get("threads"),
        "flush_denormal": torch_settings.get("flush_denormal"),
        "cuda": torch.cuda.is_available(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command as it was run, relative to the repository root where possible."""
    argv = sys.argv if argv is None else argv
    script = argv[0]
    try:
        script = str(Path(script).resolve().relative_to(REPO))
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in ["python", script, *argv[1:]])


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def fmt(value: float | None, spec: str = ".3f", missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_json_default))
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the part between the ``name`` markers replaced by ``body`` (markers and body
    appended at the end when absent); everything outside the markers is kept byte for byte.
    Each benchmark owns one such section of ``bench/RESULTS.md``."""
    start, end = _markers(name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    i, j = text.find(start), text.find(end)
    if i != -1 and j > i:
        return text[:i] + block + text[j + len(end) :]
    if i != -1 or j != -1:
        raise ValueError(f"unbalanced markers: expected {start} ... {end} once, in that order")
    sep = "" if not text or text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n"
    return f"{text}{sep}{block}\n"


def marked_sections(text: str) -> list[str]:
    """Every ``<!-- name:start --> ... <!-- name:end -->`` block of ``text``, markers included."""
    return [m.group(0) for m in re.finditer(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", text, flags=re.S)]


BASELINE_LR = 0.01  # the thesis's baseline: SGD with a single LR of 0.01 and step decay


def range_tests(train, classes: list[str], variants, config_for, num_iter: int, log=None) -> dict[str, dict]:
    """The product's LR procedure (``ml.train.recipes.find_lr``): one range test per optimiser
    family of ``variants`` (``ml.train.schedules.lr_family``; ``sgd`` is the thesis's fixed-LR
    baseline and needs none), with the config ``config_for(variant)`` of the family's first variant."""
    from ml.train.recipes import find_lr
    from ml.train.schedules import lr_family

    out = {}
    for family in dict.fromkeys(lr_family(v) for v in variants if v != "sgd"):
        first = next(v for v in variants if v != "sgd" and lr_family(v) == family)
        start = time.perf_counter()
        res = find_lr(train, classes, config_for(first), num_iter=num_iter)
        out[family] = {
            "chosen": res.chosen,
            "bracket": list(res.bracket),
            "iterations": len(res.lrs),
            "stopped_early": res.stopped_early,
            "wall_seconds": time.perf_counter() - start,
        }
        if log:
            log(
                f"range test {family}: chosen {res.chosen:.3g} (bracket {res.bracket[0]:.3g}.."
                f"{res.bracket[1]:.3g}, {out[family]['wall_seconds']:.0f}s)"
            )
    return out


def variant_lr(variant: str, finders: dict[str, dict]) -> float:
    """A variant's LR: the thesis baseline's for ``sgd``, else the chosen LR of its family's range test."""
    from ml.train.schedules import lr_family

    return BASELINE_LR if variant == "sgd" else float(finders[lr_family(variant)]["chosen"])
