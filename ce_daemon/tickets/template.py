"""Queue field templates: ``$field`` and ``${dotted.path}`` substituted from an alert.

A field the alert lacks renders as ``<missing:field>`` (a placeholder a person reading the ticket sees
at once, CE writes ``value_unavailable``); ``$$`` is a literal ``$``. Values that are not text render
as JSON (lists, objects) or their plain form (numbers, booleans). Templates are compiled once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Final

import orjson

__all__ = ["MISSING", "Template", "compile_template", "render"]

MISSING: Final = "<missing:{}>"
_TOKEN: Final = re.compile(r"\$(?:\$|\{([A-Za-z_][\w.-]*)\}|([A-Za-z_]\w*))")

Part = str | tuple[str, ...]


class Template:
    """A compiled template: literal text and field paths, in order."""

    __slots__ = ("fields", "parts", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        parts: list[Part] = []
        last = 0
        for match in _TOKEN.finditer(source):
            parts.append(source[last : match.start()])
            name = match.group(1) or match.group(2)
            parts.append("$" if name is None else tuple(name.split(".")))
            last = match.end()
        parts.append(source[last:])
        self.parts: tuple[Part, ...] = tuple(p for p in parts if p != "")
        self.fields = tuple(".".join(p) for p in self.parts if isinstance(p, tuple))

    def render(self, alert: Mapping[str, Any]) -> str:
        """The template with each field of ``alert`` substituted (a placeholder for a missing one)."""
        return "".join(part if isinstance(part, str) else _value(alert, part) for part in self.parts)


def _value(alert: Mapping[str, Any], path: tuple[str, ...]) -> str:
    node: Any = alert
    for step in path:
        if isinstance(node, Mapping) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return MISSING.format(".".join(path))
    if node is None:
        return MISSING.format(".".join(path))
    if isinstance(node, str):
        return node
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, int | float):
        return str(node)
    return orjson.dumps(node, option=orjson.OPT_SORT_KEYS, default=str).decode()


@lru_cache(maxsize=4096)
def compile_template(source: str) -> Template:
    """The compiled form of ``source`` (cached: rules share their templates)."""
    return Template(source)


def render(source: str, alert: Mapping[str, Any]) -> str:
    """Render ``source`` against ``alert`` (see the module docstring)."""
    return compile_template(source).render(alert)


Renderer = Callable[[Mapping[str, Any]], str]
