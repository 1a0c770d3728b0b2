"""Read a YAML pipeline file into plain Python values, keeping where each value came from.

PyYAML's ``safe_load`` forgets positions, so the file is composed into nodes and walked by
hand: every mapping key and value gets a 1-based (line, column), which is how validation
errors end up reading ``pipeline.yaml:41:7: logs.routes[2].sink.url: …``.

Secrets are references, resolved here and remembered by path so that nothing downstream
ever echoes them: ``{$env: NAME}``, ``{$file: path}``, ``{$credential: name}`` (the last
one read from ``$CREDENTIALS_DIRECTORY``, which systemd's ``LoadCredential=`` fills).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ce_daemon.errors import Problem

Loc = tuple[str | int, ...]
SECRET_KEYS = ("$env", "$file", "$credential")


@dataclass
class Source:
    """A parsed pipeline file: its data, where every value sits, and which values are secrets."""

    file: str
    data: Any
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    secret_paths: set[Loc] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)

    def position(self, loc: Loc, *, key: bool = False) -> tuple[int, int] | None:
        """The place of ``loc`` (or of its nearest ancestor present in the file)."""
        probe = loc
        while True:
            table = self.key_positions if key else self.positions
            if probe in table:
                return table[probe]
            if probe in self.positions:
                return self.positions[probe]
            if not probe:
                return None
            probe = probe[:-1]

    def problem(self, loc: Loc, message: str, *, hint: str | None = None, key: bool = False) -> Problem:
        """A :class:`Problem` placed at ``loc``."""
        place = self.position(loc, key=key)
        line, column = place or (None, None)
        return Problem(self.file, dotted(loc), message, line, column, hint)

    def is_secret(self, loc: Loc) -> bool:
        """True when ``loc`` is, or lies inside, a resolved secret reference."""
        return any(loc[: len(s)] == s for s in self.secret_paths)


def dotted(loc: Loc) -> str:
    """``("logs", "routes", 2, "sink")`` → ``logs.routes[2].sink``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def read_source(path: Path, *, environ: Mapping[str, str] | None = None) -> Source:  # noqa: PLR0911 - one return per way a file can be unusable
    """Parse ``path``; problems (unreadable, not YAML, not a mapping, bad secrets) are collected."""
    env = os.environ if environ is None else environ
    name = str(path)
    source = Source(file=name, data=None)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        source.problems.append(Problem(name, "", "file not found"))
        return source
    except IsADirectoryError:
        source.problems.append(Problem(name, "", "is a directory, not a pipeline file"))
        return source
    except (OSError, UnicodeDecodeError) as exc:
        source.problems.append(Problem(name, "", f"cannot read the file: {exc}"))
        return source
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        message = f"not valid YAML: {exc.problem or exc}"
        source.problems.append(Problem(name, "", message, line, column))
        return source
    except yaml.YAMLError as exc:
        source.problems.append(Problem(name, "", f"not valid YAML: {exc}"))
        return source
    if node is None:
        source.problems.append(Problem(name, "", "the file is empty; a pipeline needs at least `tenants:`"))
        return source
    if not isinstance(node, yaml.MappingNode):
        source.problems.append(
            Problem(
                name,
                "",
                "the top level must be a mapping of sections (tenants:, logs:, …)",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
            )
        )
        return source
    walker = _Walker(source, env, path.parent)
    source.data = walker.build(node, ())
    return source


class _Walker:
    """Turns composed YAML nodes into Python values, recording positions as it goes."""

    def __init__(self, source: Source, environ: Mapping[str, str], base: Path) -> None:
        self.source = source
        self.environ = environ
        self.base = base
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.source.positions[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        return self.constructor.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> Any:
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        if len(node.value) == 1 and keys and keys[0] in SECRET_KEYS:
            return self._secret(keys[0], node.value[0][1], loc)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.constructor.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)
            child = (*loc, key)
            self.source.key_positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in result:
                self.source.problems.append(
                    self.source.problem(child, "duplicate key (YAML would keep only the last)", key=True)
                )
            result[key] = self.build(value_node, child)
        return result

    def _secret(self, kind: str, node: yaml.Node, loc: Loc) -> str | None:
        self.source.secret_paths.add(loc)
        ref = node.value if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(ref, str) or not ref:
            self.source.problems.append(
                self.source.problem(loc, f"{kind} needs a name, e.g. {{{kind}: NAME}}")
            )
            return None
        if kind == "$env":
            value = self.environ.get(ref)
            if value is None:
                self.source.problems.append(
                    self.source.problem(
                        loc,
                        f"environment variable {ref} is not set",
                        hint=f"export {ref}=… before starting, or use {{$file: path}}",
                    )
                )
            return value
        if kind == "$credential":
            directory = self.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                self.source.problems.append(
                    self.source.problem(
                        loc,
                        f"credential {ref!r} asked for but $CREDENTIALS_DIRECTORY is not set",
                        hint="systemd sets it from LoadCredential=; outside systemd use $env or $file",
                    )
                )
                return None
            target = Path(directory) / ref
        else:
            target = Path(ref) if Path(ref).is_absolute() else self.base / ref
        try:
            return target.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            self.source.problems.append(
                self.source.problem(loc, f"cannot read secret file {target}: {reason}")
            )
            return None
