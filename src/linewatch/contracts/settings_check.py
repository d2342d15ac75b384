"""Names that look like linewatch settings but match none (a misspelt environment variable or TOML key),
found so the CLI can warn instead of silently ignoring them. The settings themselves: :mod:`.settings`."""

from __future__ import annotations

import os
import tomllib
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from .settings import CONFIG_ENV, SECRETS_DIR_ENV, Settings

# Environment variables that start with LINEWATCH_ but are not settings: the set-up's (scripts/bootstrap.sh) and the
# test suite's (scripts/test.sh, tests/datasets.py), which reach every command the tests start.
_NOT_SETTINGS = {CONFIG_ENV, SECRETS_DIR_ENV, "LINEWATCH_WITH_BROWSER", "LINEWATCH_WITH_TESTS",
                 "LINEWATCH_TEST_PROCESSES", "LINEWATCH_CASES_ROOT"}


def _field_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The settings model of field ``name`` of ``model`` (``kafka`` -> KafkaSettings), None for a plain value."""
    info = model.model_fields.get(name)
    annotation = info.annotation if info else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _is_mapping(model: type[BaseModel], name: str) -> bool:
    """Whether field ``name`` of ``model`` is a mapping (``dict[str, float]``, optional or not), whose keys are
    the user's (a line id) and may follow its name in an environment variable."""
    annotation = model.model_fields[name].annotation
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    return any(typing.get_origin(a) is dict or a is dict for a in options)


def _known(path: list[str]) -> bool:
    """Whether ``path`` (``["kafka", "frames_retention", "ms"]``) names a setting or a section of them; a
    mapping setting's own key may follow its name (``[..., "defect_rate_max_by_line", "line-1"]``)."""
    model: type[BaseModel] | None = Settings
    for i, name in enumerate(path):
        if model is None or name not in model.model_fields:
            return False
        if _is_mapping(model, name):
            return len(path) - i <= 2
        model = _field_model(model, name)
    return True


def _unknown_keys(model: type[BaseModel], table: dict, section: str = "") -> list[str]:
    """Keys of a TOML ``table`` read into ``model`` that name no field, nested tables included, as
    ``detektor`` (top level) or ``[training] epochz``."""
    found = []
    for key, value in table.items():
        inner = _field_model(model, key)
        if key not in model.model_fields:
            found.append(f"[{section}] {key}" if section else key)
        elif isinstance(value, dict) and inner is not None:
            found += _unknown_keys(inner, value, f"{section}.{key}" if section else key)
    return found


def unknown_settings(environ: dict[str, str] | None = None) -> list[str]:
    """Names that look like settings but match none, so they would be silently ignored (a misspelt
    ``LINEWATCH_DETECTOR__MAX_BACH``, a ``[detektor]`` table in the config file); for a warning."""
    environ = dict(os.environ) if environ is None else environ
    found = []
    for name in sorted(environ):
        if not name.startswith("LINEWATCH_") or name in _NOT_SETTINGS:
            continue
        if not _known(name.removeprefix("LINEWATCH_").lower().split("__")):
            found.append(name)
    config = environ.get(CONFIG_ENV)
    try:
        table = tomllib.loads(Path(config).expanduser().read_text()) if config else {}
    except (tomllib.TOMLDecodeError, OSError):  # reported when the settings are read
        table = {}
    return found + [f"{config}: {key}" for key in _unknown_keys(Settings, table)]
