"""The one policy loader: the threshold files of ``policies/`` (``validation``, ``promotion``,
``drift``, ``augcheck``, ``prediction``), read from ``get_settings().policies_dir`` unless a path is given.

A team's copy of a policy file must carry every key of the shipped one and no other: the valid
keys are the fields of the policy's typed class where it has one (``keys=``), otherwise the key
tree of the shipped file in the repository's ``policies/`` folder (nested sections, a key whose
shipped value is not a section is a leaf whatever its value). Every mistake in such a file is a
:class:`PolicyError`, one line naming the file and the key:

- ``<file>: no such <name> policy file`` (also ``is not a file``, ``cannot be read (<why>)``)
- ``<file>: the <name> policy file is empty``
- ``<file>: line <n>: not valid YAML (<yaml's problem>[, <yaml's context> that starts on line <m>])``
- ``<file>: the <name> policy must be a mapping of keys to values, got <type>``
- ``<file>: unknown <name> policy key '<a.b>' (did you mean '<b2>'?)`` (several: ``keys``, comma-separated)
- ``<file>: missing <name> policy key '<a.b>'`` / ``missing <name> policy section '<a>'``
- ``<file>: <name> policy key '<a>' must be a section of keys, got <type>``

This is the core: it imports nothing of skinflow but :mod:`ml.settings`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ml.settings import get_settings, yaml_problem

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "policies"
POLICY_NAMES = ("validation", "promotion", "drift", "augcheck", "prediction")

T = TypeVar("T")


class PolicyError(ValueError):
    """A policy file is wrong (a user's mistake): the message is one line naming the file and the key."""


def shipped_path(name: str) -> Path:
    """The repository's default file of policy ``name`` (``policies/<name>.yaml``)."""
    return SHIPPED_DIR / f"{name}.yaml"


def policy_path(name: str, path: str | Path | None = None) -> Path:
    """``path``, else ``<settings.policies_dir>/<name>.yaml``."""
    return Path(path) if path else Path(get_settings().policies_dir) / f"{name}.yaml"


def load_policy(name: str, path: str | Path | None = None, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The mapping in policy file ``name`` (at ``path``, else in the settings' ``policies_dir``),
    checked key by key: against ``keys`` (the fields of the policy's typed class, a flat mapping)
    or, when None, against the key tree of the shipped ``policies/<name>.yaml``. Raises
    :class:`PolicyError` (see the module docstring)."""
    file = policy_path(name, path)
    values = _read(name, file)
    schema: dict[str, Any] = dict.fromkeys(keys) if keys is not None else _tree(_read(name, shipped_path(name)))
    problems = _unknown(values, schema)
    if problems:
        plural = "s" if len(problems) > 1 else ""
        raise PolicyError(f"{file}: unknown {name} policy key{plural} " + ", ".join(problems))
    problem = _misshapen(values, schema, name)
    if problem:
        raise PolicyError(f"{file}: {problem}")
    return values


def build_policy(name: str, path: str | Path | None, make: Callable[..., T], keys: Iterable[str]) -> T:
    """``make(**values)`` of :func:`load_policy`'s checked values; a ValueError the policy class
    raises on a value (a range, a consistency rule) becomes a :class:`PolicyError` naming the file."""
    values = load_policy(name, path, keys)
    try:
        return make(**values)
    except PolicyError:
        raise
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{policy_path(name, path)}: {exc}") from exc


def _read(name: str, file: Path) -> dict[str, Any]:
    if not file.exists():
        raise PolicyError(f"{file}: no such {name} policy file")
    if not file.is_file():
        raise PolicyError(f"{file}: the {name} policy path is not a file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise PolicyError(f"{file}: the {name} policy file cannot be read ({why})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{file}: {yaml_problem(exc)}") from exc
    if data is None:
        raise PolicyError(f"{file}: the {name} policy file is empty")
    if not isinstance(data, dict):
        raise PolicyError(f"{file}: the {name} policy must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _tree(values: Mapping[str, Any]) -> dict[str, Any]:
    """The key tree of a mapping: sections (mappings) recurse, anything else is a leaf (None)."""
    return {k: _tree(v) if isinstance(v, Mapping) else None for k, v in values.items()}


def _unknown(values: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``'a.b' (did you mean 'c'?)`` for each key of ``values`` that ``schema`` lacks, at any depth."""
    out = []
    for key, value in values.items():
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            out.append(f"'{prefix}{key}'{hint}")
        elif isinstance(schema[key], Mapping) and isinstance(value, Mapping):
            out += _unknown(value, schema[key], f"{prefix}{key}.")
    return out


def _misshapen(values: Mapping[str, Any], schema: Mapping[str, Any], name: str, prefix: str = "") -> str | None:
    """The first missing key or section, or a section given as a plain value."""
    for key, sub in schema.items():
        if key not in values:
            return f"missing {name} policy {'section' if isinstance(sub, Mapping) else 'key'} '{prefix}{key}'"
        if isinstance(sub, Mapping):
            if not isinstance(values[key], Mapping):
                kind = "nothing" if values[key] is None else type(values[key]).__name__
                return f"{name} policy key '{prefix}{key}' must be a section of keys, got {kind}"
            problem = _misshapen(values[key], sub, name, f"{prefix}{key}.")
            if problem:
                return problem
    return None
