"""A field plan written out as Python source: one straight-line function per (mapping, subtype, format).

`FieldPlan.collect` (in :mod:`ce_daemon.logs.cef`) is the reference: a loop over a tuple of steps, each
unpacked and tested for its getter, converter and default on every record. For a 30-field record
that bookkeeping is most of the cost of CEF and LEEF. :func:`generate_collect` writes the same plan
as source text, one block per output key, with every compile-time fact already decided: a top-level
key is read with ``get("key")``, a field without a default has no default branch, a constant field
is one ``add("key=value")``, a label is added in the same branch as the value it labels. The result
is the same list of strings, byte for byte (``tests/test_generated_writers.py`` checks it against
the reference on every subtype of the simulator and on generated records), in about half the time.

The source is kept readable (``ce-daemon logs writer`` prints it): each block is commented with its
output key and where its value comes from. Keys, fields and defaults from the mapping file enter
the source only through ``repr``; getters and converters are passed in as named objects, never as
text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ce_daemon.logs.mapping import Getter, Record

TextConverter = Callable[[Any], "str | None"]


@dataclass(frozen=True, slots=True)
class PlanStep:
    """One output key of a field plan, as the generator needs it.

    ``key_eq`` is the key with its separator; ``field`` the top-level key read when ``getter`` is None;
    ``getter`` reads the value otherwise (None when the field is a constant: ``constant`` is then True);
    ``converter`` turns a value into text (None: rendered by type); ``default`` is the text written
    when the record gives none; ``follower`` is a ``key_eq + text`` part written whenever this key is.
    """

    key_eq: str
    field: str
    getter: Getter | None
    converter: TextConverter | None
    default: str | None
    follower: str | None
    constant: bool = False
    source: str = ""
    """Where the value comes from, for the comment above the block (a field name or path)."""


@dataclass(frozen=True, slots=True)
class GeneratedCollect:
    """A generated ``record -> [part, ...]`` function and the source it was compiled from."""

    function: Callable[[Record], list[str]]
    source: str


def generate_collect(
    steps: Sequence[PlanStep], render_text: Callable[[Any], str | None], *, name: str = "collect"
) -> GeneratedCollect:
    """Write ``steps`` as one function ``name(record) -> list[str]`` and compile it."""
    lines = [
        f"def {name}(record):",
        "    get = record.get",
        "    parts = []",
        "    add = parts.append",
    ]
    namespace: dict[str, Any] = {"render_text": render_text}
    for index, step in enumerate(steps):
        lines.append(f"    # {step.key_eq[:-1]} <- {step.source or 'a constant'}")
        lines.extend("    " + line for line in _block(index, step, namespace))
    lines.append("    return parts")
    source = "\n".join(lines) + "\n"
    code = compile(source, f"<generated {name}>", "exec")
    exec(code, namespace)  # noqa: S102 - our own source text: mapping values enter it only through repr()
    function: Callable[[Record], list[str]] = namespace[name]
    return GeneratedCollect(function=function, source=source)


def _block(index: int, step: PlanStep, namespace: dict[str, Any]) -> list[str]:
    """The statements writing one step (and its follower) into ``parts``."""
    written = [f"add({step.key_eq!r} + t)"]
    defaulted = [] if step.default is None else [f"add({step.key_eq + step.default!r})"]
    if step.follower is not None:
        written.append(f"add({step.follower!r})")
        if defaulted:
            defaulted.append(f"add({step.follower!r})")
    if step.constant:
        return defaulted or ["pass"]
    if step.getter is None:
        read = f"v = get({step.field!r})"
    else:
        namespace[f"getter_{index}"] = step.getter
        read = f"v = getter_{index}(record)"
    if step.converter is not None:
        namespace[f"convert_{index}"] = step.converter
        body = [
            f"t = convert_{index}(v)",
            "if t is not None:",
            *_indent(written),
            *(["else:", *_indent(defaulted)] if defaulted else []),
        ]
        return [
            read,
            "if v is not None:",
            *_indent(body),
            *(["else:", *_indent(defaulted)] if defaulted else []),
        ]
    return [read, *_by_type(step.key_eq, written, defaulted)]


def _by_type(key_eq: str, written: list[str], defaulted: list[str]) -> list[str]:
    """A value rendered as `render_text` renders it; text, the common type, is tested first (None's
    class is not str, so no test for None comes before it)."""
    fallback = ["else:", *_indent(defaulted)] if defaulted else []
    return [
        "if v.__class__ is str:",
        "    if v:",
        f"        add({key_eq!r} + v)",
        *_indent(written[1:], 2),
        *_indent(fallback),
        "elif v is not None:",
        "    t = render_text(v)",
        "    if t:",
        *_indent(written, 2),
        *_indent(fallback),
        *fallback,
    ]


def _indent(lines: list[str], levels: int = 1) -> list[str]:
    return [("    " * levels) + line for line in lines]
