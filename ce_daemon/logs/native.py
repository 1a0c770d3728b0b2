"""The C writer of CEF and LEEF lines (``_native.c``), used when the install could build it.

A CEF or LEEF route spends most of its time turning a record into ``key=value`` fields: about 100 ns
a field in CPython even once the plan is generated code (:mod:`ce_daemon.logs.generated`), 7-10 µs
for a 40-field record. ``_native.Writer`` runs the same field plan in C, and the header's: the
dictionary reads, the type tests, the escaping and the UTF-8 encoding; getters of nested paths,
converters (addresses, severities, LEEF's devTime), the header's readers and the rendering of
containers stay the Python functions they are, called from C. Integers read by an Integer or a CEF
time key are written in C (`INT_TEXT`, `EPOCH_MS_TEXT`), as those converters write them.

The C file is compiled when the package is installed (``hatch_build.py``, with the interpreter's own
compiler settings). Without a C compiler the install still succeeds and the generated Python writers
are used: the same bytes, more CPU; ``CE_DAEMON_NATIVE=0`` in the daemon's environment turns a built one
off (the benchmarks compare the two that way). ``ce-daemon test --route NAME --show-writer`` says which
one runs. A build of an older ``_native.c`` (its ``ABI`` differs) is not used.

The bytes are the reference formatter's, byte for byte: ``tests/test_generated_writers.py`` holds
all three writers (reference loop, generated Python, C) to each other on every subtype of the
simulator and on generated mappings over values holding every control character, escape and lone
surrogate.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, Final

from ce_daemon.logs.generated import PlanStep
from ce_daemon.logs.mapping import Record

ABI: Final = 5
"""The ``NATIVE_ABI`` of the ``_native.c`` this module is written for."""

CEF: Final = 0
LEEF: Final = 1
INT_TEXT: Final = 1
"""A converter that writes an exact int as ``str(value)``: the C writer does it without the call."""
EPOCH_MS_TEXT: Final = 2
"""A converter that writes an exact int as epoch milliseconds (seconds below 1e11 times 1000)."""


HeadPart = str | Callable[[Record], "str | None"] | tuple[str, "str | None", int]
"""A constant of the head, already escaped; a reader; or ``(field, fallback, limit)``: a top-level field
read as a String rule's header field is (a value rendered by type, the fallback when it gives no text,
cut to ``limit`` characters unless ``limit`` is -1). A reader's or a field's text is escaped as a header
field."""


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get("CE_DAEMON_NATIVE", "1") == "0":
        return None, "turned off (CE_DAEMON_NATIVE=0)"
    try:
        from ce_daemon.logs import _native  # built at install time when a C compiler is there
    except ImportError as exc:
        return None, f"not built ({exc})"
    found = getattr(_native, "ABI", None)
    if found != ABI:
        return None, f"a stale build (ABI {found}, expected {ABI}): reinstall the package"
    return _native, "built"


_MODULE, STATE = _load()
AVAILABLE: Final = _MODULE is not None
"""True when the C writer is built and current; ``STATE`` says why not otherwise."""


def line_writer(
    head: Sequence[HeadPart],
    steps: tuple[PlanStep, ...],
    *,
    mode: int,
    separator: str,
    joint: str,
    escape: Callable[[str], str],
    render_text: Callable[[Any], str | None],
    shortcuts: Mapping[Callable[[Any], str | None], int],
    delimiter: str = "\t",
) -> Callable[[Record], bytes] | None:
    """``record -> line`` in C: the ``head`` parts, then a field plan's ``steps``; None when the C
    writer is not available.

    A reader or a field in ``head`` gives text or None (nothing written); its text is escaped as a
    header field (``\\``, ``|``, control characters as pictures), as `header_text` does. ``mode`` is `CEF` or
    `LEEF` (the escaping of values); ``separator`` ends each key in the steps (it becomes ``=``);
    ``joint`` goes between fields; ``escape`` makes the constant texts (defaults and followers) safe,
    as the Python writers escape them; ``shortcuts`` names the converters whose effect on an int the
    C writer knows (`INT_TEXT`, `EPOCH_MS_TEXT`); ``delimiter`` is LEEF's.
    """
    if _MODULE is None:
        return None
    parts: list[HeadPart] = []
    for part in head:
        if isinstance(part, str) and parts and isinstance(parts[-1], str):
            parts[-1] += part  # neighbouring constants are written as one
        elif part != "":
            parts.append(part)
    compiled = tuple(_step(step, separator, escape, shortcuts) for step in steps)
    writer: Callable[[Record], bytes] = _MODULE.Writer(
        tuple(parts), compiled, mode, delimiter, joint.encode(), render_text
    )
    return writer


def _step(
    step: PlanStep,
    separator: str,
    escape: Callable[[str], str],
    shortcuts: Mapping[Callable[[Any], str | None], int],
) -> tuple[bytes, str, Any, Any, bytes | None, bytes | None, bool, int]:
    """One step as ``_native.Writer`` takes it: texts already escaped and encoded."""
    key = step.key_eq.removesuffix(separator)
    follower: bytes | None = None
    if step.follower is not None:
        follower_key, _, follower_text = step.follower.partition(separator)
        follower = _encoded(f"{follower_key}={escape(follower_text)}")
    return (
        f"{key}=".encode(),
        step.field,
        None if step.constant else step.getter,
        step.converter,
        None if step.default is None else _encoded(escape(step.default)),
        follower,
        step.constant,
        0 if step.converter is None else shortcuts.get(step.converter, 0),
    )


def _encoded(text: str) -> bytes:
    return text.encode("utf-8", "replace")
