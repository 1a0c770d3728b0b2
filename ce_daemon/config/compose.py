"""YAML text to a tree of nodes, within bounds: the first half of reading a pipeline file.

LibYAML's parser (through PyYAML, when PyYAML was built with it, as its wheels are) turns the text
into events; PyYAML's own scanner would need seconds for a few hundred KiB, and more than linear
time on long lines. The events are composed here rather than by PyYAML's composer, which recurses
once per level of nesting and counts nothing: this one does not recurse, stops at
:data:`MAX_DEPTH` levels and :data:`MAX_VALUES` nodes, and keeps each use of an alias as an
:class:`Alias` node, so that the reader can count what aliases expand to and place their errors
where they are used. Tags are resolved as PyYAML's safe loader resolves them.
"""

from __future__ import annotations

from typing import Any, Final

import yaml
from yaml.composer import ComposerError

from ce_daemon.errors import Problem

MAX_DEPTH: Final = 64
"""How deep lists and mappings may nest (filters included); the example file reaches 8."""
MAX_VALUES: Final = 100_000
"""How many values a file may hold (once aliases and merge keys are expanded, for the reader)."""

_Parser: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ComposeError(Exception):
    """The text is not one YAML document within the bounds; ``problem`` says where and why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class Alias(yaml.Node):
    """Where an alias (``*name``) is used; ``target`` is the anchored node it stands for."""

    id = "alias"

    def __init__(self, target: yaml.Node, mark: yaml.Mark) -> None:
        super().__init__(target.tag, target.value, mark, mark)
        self.target = target


def compose(text: str, file: str) -> yaml.Node | None:
    """The node tree of the one document in ``text`` (None when there is none).

    Raises :class:`ComposeError` when the text is not YAML, holds more than one document, or
    exceeds the bounds; ``file`` names the file in the problem.
    """
    loader = _Parser(text)
    try:
        return _Composer(loader, file).document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise ComposeError(Problem(file, "", f"not valid YAML: {exc.problem or exc}", line, column)) from None
    except yaml.reader.ReaderError as exc:
        # LibYAML counts the position in bytes of the UTF-8 text, PyYAML's own reader in characters
        raw = text.encode("utf-8") if _Parser is not yaml.SafeLoader else None
        position = exc.position if isinstance(exc.position, int) else 0
        line = (raw.count(b"\n", 0, position) if raw else text.count("\n", 0, position)) + 1
        column = position - (raw.rfind(b"\n", 0, position) if raw else text.rfind("\n", 0, position))
        character = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a character"
        message = f"not valid YAML: {character} is not allowed (control characters must be escaped)"
        raise ComposeError(Problem(file, "", message, line, column)) from None
    except yaml.YAMLError as exc:
        raise ComposeError(Problem(file, "", f"not valid YAML: {exc}")) from None
    finally:
        loader.dispose()


class _Composer:
    """Builds the node tree from the parser's events, without recursion and within bounds."""

    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.anchors: dict[str, yaml.Node] = {}
        self.count = 0

    def document(self) -> yaml.Node | None:
        events = self.loader
        events.get_event()  # type: ignore[no-untyped-call] # StreamStart; PyYAML's stubs leave it untyped
        if events.check_event(yaml.StreamEndEvent):
            return None
        events.get_event()  # type: ignore[no-untyped-call] # DocumentStart
        root = self._node()
        events.get_event()  # type: ignore[no-untyped-call] # DocumentEnd
        if not events.check_event(yaml.StreamEndEvent):
            mark = events.peek_event().start_mark  # type: ignore[no-untyped-call] # untyped in the stubs
            raise ComposerError(None, None, "a pipeline file holds one YAML document, this is a second", mark)
        return root

    def _node(self) -> yaml.Node:
        """The next node and everything inside it."""
        # open collections, each with the key read and waiting for its value (mappings)
        stack: list[tuple[yaml.CollectionNode, list[yaml.Node]]] = []
        while True:
            event: Any = self.loader.get_event()  # type: ignore[no-untyped-call] # untyped in PyYAML's stubs
            if isinstance(event, yaml.CollectionEndEvent):
                node: yaml.Node = stack.pop()[0]
                node.end_mark = event.end_mark
            else:
                node = self._start(event, len(stack))
                if isinstance(node, yaml.CollectionNode):
                    stack.append((node, []))
                    continue
            if not stack:
                return node
            parent, key = stack[-1]
            if isinstance(parent, yaml.SequenceNode):
                parent.value.append(node)
            elif key:
                parent.value.append((key.pop(), node))
            else:
                key.append(node)

    def _start(self, event: Any, depth: int) -> yaml.Node:  # PyYAML's stubs type events' marks loosely
        self.count += 1
        if self.count > MAX_VALUES:
            raise ComposeError(self._problem(event, f"the file holds more than {MAX_VALUES:,} values"))
        start: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(str(event.anchor))
            if target is None:
                raise ComposerError(None, None, f"found undefined alias {event.anchor!r}", start)
            return Alias(target, start)
        node: yaml.Node
        if isinstance(event, yaml.ScalarEvent):
            tag = self._tag(event.tag, yaml.ScalarNode, event.value, event.implicit)
            end: Any = event.end_mark
            node = yaml.ScalarNode(tag, event.value, start, end, style=event.style)
        else:
            if depth >= MAX_DEPTH:
                raise ComposeError(
                    self._problem(event, f"lists and mappings nest deeper than {MAX_DEPTH} levels")
                )
            kind: type[yaml.CollectionNode] = (
                yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) else yaml.MappingNode
            )
            tag = self._tag(event.tag, kind, None, event.implicit)
            node = kind(tag, [], start, None, flow_style=event.flow_style)
        if event.anchor is not None:  # YAML lets a later anchor of the same name replace it
            self.anchors[str(event.anchor)] = node
        return node

    def _tag(self, tag: str | None, kind: type[yaml.Node], value: str | None, implicit: Any) -> str:
        if tag is None or tag == "!":
            return str(self.loader.resolve(kind, value, implicit))  # type: ignore[no-untyped-call] # untyped stub
        return tag

    def _problem(self, event: Any, message: str) -> Problem:
        mark = event.start_mark
        return Problem(self.file, "", message, mark.line + 1, mark.column + 1)
