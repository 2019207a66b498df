"""The one base of skinflow's typed configuration objects (pydantic), and the one mark of a
runtime-only field.

Every config class (``TrainConfig``, ``DataConfig``, ``ProGANConfig``, ...) derives from
:class:`ConfigModel`: unknown fields are refused (``extra="forbid"``), assignments are validated,
and ``to_dict()`` is the JSON form. A field declared with :func:`runtime` says how or where a run
goes (device, workers, progress bar, checkpoint folder), not what it computes: a resumed run may
change it, and it is left out of the config's :meth:`ConfigModel.identity` (resume keys, config
hashes, logged identities). The mark sits on the declaration, so the list of such fields is
``Class.runtime_fields()`` and written nowhere else.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticUndefined

RUNTIME_MARK = "runtime"  # key in a field's json_schema_extra (also shown in the flows' parameter schemas)


def runtime(default: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """``Field(default, **kwargs)`` marked runtime-only (see :meth:`ConfigModel.runtime_fields`)."""
    extra = kwargs.pop("json_schema_extra", None) or {}
    if not isinstance(extra, dict):
        raise TypeError("runtime() takes json_schema_extra as a dict")
    return Field(default, json_schema_extra={**extra, RUNTIME_MARK: True}, **kwargs)


class ConfigModel(BaseModel):
    """Base of the config classes: strict (unknown fields refused), validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of every field."""
        return self.model_dump(mode="json")

    @classmethod
    def runtime_fields(cls) -> tuple[str, ...]:
        """The fields declared with :func:`runtime`, in declaration order."""
        return tuple(
            name
            for name, info in cls.model_fields.items()
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get(RUNTIME_MARK) is True
        )

    def identity(self) -> dict[str, Any]:
        """``to_dict()`` without the runtime-only fields: what the config computes."""
        free = self.runtime_fields()
        return {k: v for k, v in self.to_dict().items() if k not in free}
