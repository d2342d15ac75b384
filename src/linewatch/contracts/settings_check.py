"""Names that look like linewatch settings but match none (a misspelt environment variable or TOML key),
found so the CLI can warn instead of silently ignoring them. The settings themselves: :mod:`.settings`."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel

from .settings import CONFIG_ENV, SECRETS_DIR_ENV, Settings

# Environment variables that start with LINEWATCH_ but are not settings.
_NOT_SETTINGS = {CONFIG_ENV, SECRETS_DIR_ENV, "LINEWATCH_WITH_BROWSER", "LINEWATCH_WITH_TESTS"}


def _section_model(section: str) -> type[BaseModel] | None:
    info = Settings.model_fields.get(section)
    model = info.annotation if info else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _known(section: str, field: str | None = None) -> bool:
    if field is None:
        return section in Settings.model_fields
    model = _section_model(section)
    return model is not None and field in model.model_fields


def unknown_settings(environ: dict[str, str] | None = None) -> list[str]:
    """Names that look like settings but match none, so they would be silently ignored (a misspelt
    ``LINEWATCH_DETECTOR__MAX_BACH``, a ``[detektor]`` table in the config file); for a warning."""
    environ = dict(os.environ) if environ is None else environ
    found = []
    for name in sorted(environ):
        if not name.startswith("LINEWATCH_") or name in _NOT_SETTINGS:
            continue
        section, nested, field = name.removeprefix("LINEWATCH_").lower().partition("__")
        if not _known(section, field if nested else None):
            found.append(name)
    config = environ.get(CONFIG_ENV)
    try:
        table = tomllib.loads(Path(config).expanduser().read_text()) if config else {}
    except (tomllib.TOMLDecodeError, OSError):  # reported when the settings are read
        table = {}
    for section, value in table.items():
        if isinstance(value, dict) and _section_model(section) is not None:
            found += [f"{config}: [{section}] {k}" for k in value if not _known(section, k)]
        elif not _known(section):
            found.append(f"{config}: {section}")
    return found
