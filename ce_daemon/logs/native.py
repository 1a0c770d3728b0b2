"""The C writer of CEF and LEEF lines (``_native.c``), used when the install could build it.

A CEF or LEEF route spends most of its time turning a record into ``key=value`` fields: about 100 ns
a field in CPython even once the plan is generated code (:mod:`ce_daemon.logs.generated`), 7-10 µs
for a 40-field record. ``_native.Writer`` runs the same field plan in C, and the header's: the
dictionary reads, the type tests, the escaping and the UTF-8 encoding; getters of nested paths,
converters (addresses, severities, LEEF's devTime), the header's readers and the rendering of
containers stay the Python functions they are, called from C. Integers read by an Integer or a CEF
time key are written in C (`INT_TEXT`, `EPOCH_MS_TEXT`), as those converters write them.

A route goes further (`ce_daemon.logs.route.decide_texts`): the writer reads each frame of a spooled
page as JSON text (``write_frame``) and builds no dict; its filter and active mutes, if it has any, are
given a dict of the fields they name (``pick_frame``, `filter_picker`). A string is escaped
straight from its JSON bytes and an int written from its digits; what needs Python gets the objects orjson
would make (a converter's argument, a float, a container), and a getter or a header reader gets a dict
of the fields it declared (`ce_daemon.logs.mapping.reads`: a function that does not declare them keeps
its writer on dicts). A JSON route of the raw record ships each record's own bytes when they are what
orjson writes for it, and orjson's rewrite otherwise. The scanner takes only text orjson reads the same
way; any other frame (and any frame a converter raises on) is parsed with orjson and decided as before.
``CE_DAEMON_NATIVE=dicts`` keeps the C writer on parsed records.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import orjson

from ce_daemon.accelerators import load
from ce_daemon.filter import fields_read
from ce_daemon.logs.generated import PlanStep
from ce_daemon.logs.mapping import Record, reads_of

ABI: Final = 8
"""The ``NATIVE_ABI`` of the ``_native.c`` this module is written for."""

CEF: Final = 0
LEEF: Final = 1
JSON: Final = 3
INT_TEXT: Final = 1
"""A converter that writes an exact int as ``str(value)``: the C writer does it without the call."""
EPOCH_MS_TEXT: Final = 2
"""A converter that writes an exact int as epoch milliseconds (seconds below 1e11 times 1000)."""


HeadPart = str | Callable[[Record], "str | None"] | tuple[str, "str | None", int]
"""A constant of the head, already escaped; a reader; or ``(field, fallback, limit)``: a top-level field
read as a String rule's header field is (a value rendered by type, the fallback when it gives no text,
cut to ``limit`` characters unless ``limit`` is -1). A reader's or a field's text is escaped as a header
field."""


_MODULE, STATE = load("ce_daemon.logs._native", ABI)
AVAILABLE: Final = _MODULE is not None
"""True when the C writer is built and current; ``STATE`` says why not otherwise."""
READS_TEXT: Final = os.environ.get("CE_DAEMON_NATIVE", "1") != "dicts"
"""False when ``CE_DAEMON_NATIVE=dicts``: the C writer then reads parsed records only, never a frame's
JSON text (to compare the two, or to rule the text reader out)."""


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
    declared = _declared_reads([part for part in parts if callable(part)], steps) if READS_TEXT else None
    writer: Callable[[Record], bytes] = _MODULE.Writer(
        tuple(parts),
        compiled,
        mode,
        delimiter,
        joint.encode(),
        render_text,
        reads=declared,
        loads=orjson.loads,
    )
    return writer


def json_line_writer(dump: Callable[[Record], bytes]) -> Callable[[Record], bytes] | None:
    """A JSON route's writer of whole records: ``dump(record)`` for a dict, and from a frame's JSON text
    (``write_frame``) each record's own bytes when they are what ``dump`` (orjson's) would write, else
    ``dump`` of what orjson reads in them. None when the C writer is not available or reads no text."""
    if _MODULE is None or not READS_TEXT:
        return None
    writer: Callable[[Record], bytes] = _MODULE.Writer(
        (), (), JSON, "\t", b"", dump, reads=(), loads=orjson.loads
    )
    return writer


def filter_picker(spec: object, *mutes: object) -> Any:
    """What hands a route's filter (``spec``) and its active ``mutes`` (their filter specs; None for a
    mute of everything) their record from a frame's JSON text: ``pick_frame(frame, first)`` gives, for
    each record from ``first`` on, a dict of the fields those filters read (those the record has) as
    orjson reads them (`ce_daemon.filter.fields_read`). None when there is nothing to judge (no filter,
    no mute), when a filter's fields cannot be named, or when the C writer is not available or reads no
    text."""
    if spec is None and not mutes:
        return None
    fields = _every_key(fields_read(each) for each in (spec, *mutes) if each is not None)
    if fields is None or _MODULE is None or not READS_TEXT:
        return None
    return _MODULE.Writer((), (), JSON, "\t", b"", orjson.dumps, reads=fields, loads=orjson.loads)


def _every_key(groups: Iterable[tuple[str, ...] | None]) -> tuple[str, ...] | None:
    """The keys of every group, each once, in order; None when a group is None (its keys are unknown)."""
    keys: dict[str, None] = {}
    for group in groups:
        if group is None:
            return None
        keys.update(dict.fromkeys(group))
    return tuple(keys)


def _declared_reads(
    readers: Sequence[Callable[[Record], Any]], steps: tuple[PlanStep, ...]
) -> tuple[str, ...] | None:
    """Every top-level key the head's readers and the steps' getters read, as they declared it
    (`ce_daemon.logs.mapping.reads`); None when one of them did not: the writer then reads dicts only."""
    functions = [*readers, *(step.getter for step in steps if step.getter is not None and not step.constant)]
    return _every_key(reads_of(function) for function in functions)


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
