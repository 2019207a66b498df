"""The layout shows the architecture: imports run one way, flows -> tasks -> ml stage packages
-> ml core (settings, storage, policies, config), and ml/ is a plain library (no Prefect)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# lower layers never import higher ones; a package may import its own modules
LAYERS = [
    {"ml.settings", "ml.storage", "ml.policies", "ml.config"},  # (package __init__ files of ml count with the core)
    {"ml.data"},
    {"ml.quality", "ml.eval"},
    {"ml.train"},
    {"ml.tracking", "ml.monitor", "ml.robust", "ml.interpret", "ml.gan", "ml.predict"},
    {"ml.project"},  # the project file: overrides of the config classes of every layer above
    {"tasks"},
    {"flows"},
]


def _layer(module: str) -> int | None:
    if module == "ml":
        return 0
    for rank, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return rank
    return None


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "ml" else parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "ml"]
    return out


def _modules() -> list[tuple[str, Path]]:
    found = []
    for top in ("ml", "tasks", "flows"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            found.append((".".join(p for p in rel.parts if p != "__init__"), path))
    return found


def test_imports_run_one_way() -> None:
    violations = []
    for module, path in _modules():
        own = _layer(module)
        assert own is not None, f"{module} is in no layer: add its package to LAYERS"
        for line, imported in _imports(path):
            target = _layer(imported)
            if target is not None and target > own and _package(imported) != _package(module):
                violations.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_ml_is_a_plain_library() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}"
        for module, path in _modules()
        if module.startswith("ml")
        for line, imported in _imports(path)
        if imported.split(".")[0] == "prefect"
    ]
    assert not offenders, f"ml/ imports Prefect: {offenders}"
    flat = sorted(p.name for p in (REPO / "ml").glob("*.py") if p.name != "__init__.py")
    # the core, and the project file's loader (over the config classes of every stage: the top ml layer)
    assert flat == ["config.py", "policies.py", "project.py", "settings.py", "storage.py"], (
        f"ml/ keeps only its core flat, stage code in packages: {flat}"
    )


def test_train_models_need_no_mlflow() -> None:
    imported = {name for _, name in _imports(REPO / "ml" / "train" / "models.py")}
    assert not any(name.split(".")[0] == "mlflow" for name in imported)
