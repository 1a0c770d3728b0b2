"""The value types every settings model is built from: durations, sizes, names, the strict base model.

Apart from :mod:`ce_daemon.config.model` so that a section defined beside the code it configures
(``ce_daemon.cluster.settings``) can build on them while the core's model includes that section.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZES = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


MAX_SIZE = 2**50
"""The largest size any setting may give (1 PiB): beyond it, a value is a mistake, and overflows."""
MAX_TIMEOUT = 3600.0
"""The longest wait for one answer: an hour covers the slowest SIEM; beyond it, a typo (ms for s)."""


def duration_seconds(value: object) -> object:
    """``"30s"``, ``"5m"`` … as seconds; anything but text is left for the model to check."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", value)
        if not match:
            raise ValueError(
                "a duration is a number of seconds or a number with a unit: 500ms, 30s, 5m, 2h, 1d"
            )
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return value


def _size(value: object) -> object:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", value.lower())
        if not match:
            raise ValueError("a size is a number of bytes or a number with a unit: 512KiB, 64MiB, 2GiB, 1GB")
        size = float(match.group(1)) * _SIZES[match.group(2) or "b"]
        if not size <= MAX_SIZE:  # also a number too long to be finite
            raise ValueError(f"a size is at most {MAX_SIZE} bytes (1 PiB)")
        return int(size)
    return value


def _name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise ValueError("a name is 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
    return value


Duration = Annotated[float, BeforeValidator(duration_seconds), Field(ge=0)]
Size = Annotated[int, BeforeValidator(_size), Field(gt=0, le=MAX_SIZE)]
Timeout = Annotated[float, BeforeValidator(duration_seconds), Field(gt=0, le=MAX_TIMEOUT)]
"""How long to wait for one answer: more than zero, at most :data:`MAX_TIMEOUT`."""
Name = Annotated[str, AfterValidator(_name)]


class SecretAllowed:
    """Marks a text setting that may be written inline or given as a secret reference (a header's value)."""


SecretOrText = Annotated[str, SecretAllowed()]
"""Text that is not secret in general but may be (an HTTP header): ``{$env: …}`` is accepted there."""


class Strict(BaseModel):
    """Base of every model of ours: unknown keys are errors, defaults are validated too.

    Floats must be finite: an infinite timeout or a NaN interval would pass every comparison
    check and then hang or spin a component at run time.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


class SettingError(ValueError):
    """A value a validator refuses, with a ``hint`` of what would be right (``check`` prints it below)."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint
