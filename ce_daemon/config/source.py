"""Read a YAML pipeline file into plain Python values, keeping where each value came from.

PyYAML's ``safe_load`` forgets positions, so the file is composed into nodes
(:mod:`ce_daemon.config.compose`) and walked by hand: every mapping key and value gets a 1-based
(line, column), which is how validation errors end up reading
``pipeline.yaml:41:7: logs.routes[2].sink.url: …``.

The reader is total: whatever the file holds, :func:`read_source` returns a :class:`Source` whose
problems say what is wrong and where, in bounded time and memory. The bounds:

* the file is a regular file of at most :data:`MAX_FILE_BYTES` (a FIFO, a device or a directory
  is refused before anything is read);
* collections nest at most :data:`MAX_DEPTH` levels, and the document holds at most
  :data:`MAX_VALUES` values once aliases and merge keys are expanded (a "billion laughs" file
  stops at the limit instead of filling memory);
* only the core YAML types are read: strings, integers (signed 64-bit), floats, booleans, null,
  timestamps, lists and mappings. Any other tag (``!!binary``, ``!!set``, ``!!python/…``,
  ``!custom``) is a problem, and so is a list or mapping used as a key;
* merge keys (``<<: *defaults``) are expanded as YAML 1.1 defines them: keys written in the
  mapping win over merged ones, and of several merged mappings the first wins. A value taken from
  a merge is placed, in errors, where it is written in the anchored mapping.

Secrets are references, resolved here and remembered by path so that nothing downstream
ever echoes them: ``{$env: NAME}``, ``{$file: path}``, ``{$credential: name}`` (the last
one read from ``$CREDENTIALS_DIRECTORY``, which systemd's ``LoadCredential=`` fills). A
reference that cannot be resolved is kept in :attr:`Source.unresolved`, not in the problems:
the loader decides (a disabled route does not need its secrets).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from ce_daemon.config.compose import MAX_DEPTH, MAX_VALUES, Alias, ComposeError, compose
from ce_daemon.errors import Problem
from ce_daemon.files import UnusableFileError, read_regular_file

Loc = tuple[str | int, ...]
SECRET_KEYS = ("$env", "$file", "$credential")

MAX_FILE_BYTES: Final = 1024 * 1024
"""The largest pipeline file read (a pipeline of a hundred routes is well under 100 KiB)."""
MAX_SECRET_BYTES: Final = 64 * 1024
"""The largest secret file read (a service-account JSON key is about 2 KiB)."""

_CORE: Final = "tag:yaml.org,2002:"
_MERGE: Final = _CORE + "merge"
_INT64: Final = 2**63
_SCALARS: Final[dict[str, tuple[str, Callable[[yaml.SafeLoader, yaml.ScalarNode], object]]]] = {
    _CORE + "str": ("string", lambda _, node: node.value),
    _CORE + "int": ("integer", yaml.SafeLoader.construct_yaml_int),
    _CORE + "float": ("number", yaml.SafeLoader.construct_yaml_float),
    _CORE + "bool": ("boolean", yaml.SafeLoader.construct_yaml_bool),
    _CORE + "null": ("null", yaml.SafeLoader.construct_yaml_null),
    _CORE + "timestamp": ("timestamp", yaml.SafeLoader.construct_yaml_timestamp),
}
# What PyYAML's constructors raise on text they cannot read (``!!float x``, ``!!timestamp 2024-13-01``,
# ``!!bool maybe``, ``!!int ""``): each is a problem with the value's place, never a traceback.
_CONSTRUCTOR_ERRORS: Final = (ValueError, KeyError, IndexError, AttributeError, TypeError, OverflowError)
_UNRESOLVED_HINT: Final = (
    "`ce-daemon check --allow-unresolved-secrets` validates everything else; systemd/README.md shows "
    "how to check with the unit's credentials"
)


@dataclass(frozen=True)
class Unresolved:
    """A secret reference that could not be resolved.

    ``environmental`` is True when another environment may well resolve it: an unset variable,
    no ``$CREDENTIALS_DIRECTORY`` (outside systemd), a file this user may not read. False when the
    reference cannot work anywhere as written (a missing file, an empty one, not a regular file).
    """

    problem: Problem
    environmental: bool


@dataclass
class Source:
    """A parsed pipeline file: its data, where every value sits, and which values are secrets."""

    file: str
    data: Any
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    secret_paths: set[Loc] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)
    unresolved: dict[Loc, Unresolved] = field(default_factory=dict)
    """Secret references that could not be resolved, by place (their value in ``data`` is None)."""
    refused: set[Loc] = field(default_factory=set)
    """Values the reader refused and reported (an unsupported tag, an integer out of range…); their
    value in ``data`` is None, which validation need not report again."""

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

    def value_at(self, loc: Loc) -> object:
        """The value at ``loc`` in the data, or None when there is none."""
        value: object = self.data
        for part in loc:
            if isinstance(value, dict) and isinstance(part, str):
                value = value.get(part)
            elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
                value = value[part]
            else:
                return None
        return value

    def is_secret(self, loc: Loc) -> bool:
        """True when ``loc`` is, or lies inside, a secret reference."""
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


def read_source(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    secrets: bool = True,
    sections: tuple[str, ...] | None = None,
) -> Source:
    """Parse ``path``; problems (unreadable, not YAML, not a mapping, bad secrets) are collected.

    With ``secrets=False`` secret references are recognised (and their shape checked) but not
    resolved: for commands that only need the file's other settings. With ``sections``, only those
    top-level sections are read (each written in block style, ``name:`` at the start of a line),
    within the same bounds and at their places in the file: for commands that need a few settings
    of a file that may not read as a whole (``status`` after a rejected reload).
    """
    env = os.environ if environ is None else environ
    name = str(path)
    source = Source(file=name, data=None)
    text = _read_text(path, source)
    if text is None:
        return source
    if sections is not None:
        text = _only_sections(text, sections)
    try:
        node = compose(text, name)
    except ComposeError as exc:
        source.problems.append(exc.problem)
        return source
    if node is None:
        if sections is not None:  # none of them is written: each has its defaults
            source.data = {}
        else:
            source.problems.append(
                Problem(name, "", "the file is empty; a pipeline needs at least `tenants:`")
            )
        return source
    walker = _Walker(source, env, path.parent, resolve=secrets)
    try:
        source.data = walker.build(node, ())
    except _Stop as stop:
        source.data = None
        source.problems.append(stop.problem)
    if not isinstance(source.data, dict):  # a tag or a reference in place of the sections
        source.data = None
        if not source.problems:
            line, column = _place(node)
            message = "the top level must be a mapping of sections (tenants:, logs:, …)"
            source.problems.append(Problem(name, "", message, line, column))
    return source


def _read_text(path: Path, source: Source) -> str | None:
    try:
        raw = read_regular_file(path, limit=MAX_FILE_BYTES)
    except UnusableFileError as exc:
        if exc.errno == errno.ENOENT:
            message = "file not found"
        elif exc.errno is not None:
            message = f"cannot read the file: {exc.reason}"
        else:
            message = f"the pipeline file {exc.reason}"
        source.problems.append(Problem(source.file, "", message))
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        message = f"not UTF-8 text (byte 0x{raw[exc.start]:02x})"
        source.problems.append(Problem(source.file, "", message, line, column))
        return None


def _only_sections(text: str, names: tuple[str, ...]) -> str:
    """``text`` with the lines outside the top-level sections ``names`` blanked (others keep their places)."""
    heading = re.compile(rf"({'|'.join(map(re.escape, names))})\s*:")
    kept, keep = [], False
    for line in text.split("\n"):
        if line[:1] not in ("", " ", "\t", "#"):  # a line at column 0 starts the next top-level key
            keep = heading.match(line) is not None
        kept.append(line if keep else "")
    return "\n".join(kept)


class _Stop(Exception):  # noqa: N818 - a control-flow signal inside the walker, never seen outside it
    """The walk cannot go on (a bound was exceeded); carries the one problem to report."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _Walker:
    """Turns composed YAML nodes into Python values, recording positions as it goes."""

    def __init__(self, source: Source, environ: Mapping[str, str], base: Path, *, resolve: bool) -> None:
        self.source = source
        self.environ = environ
        self.base = base
        self.resolve = resolve
        self.constructor = yaml.SafeLoader("")
        self.values = 0
        self.depth = 0

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise _Stop(
                self._problem_at(
                    node,
                    loc,
                    f"the file holds more than {MAX_VALUES:,} values once aliases and merges are expanded",
                    hint="an alias that refers to aliases multiplies what it stands for",
                )
            )
        if isinstance(node, Alias):
            value = self.build(node.target, loc)
            self.source.positions[loc] = _place(node)
            return value
        self.source.positions[loc] = _place(node)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, loc)
        if self.depth >= MAX_DEPTH:  # an alias expanded inside itself, or aliases stacking nesting up
            raise _Stop(
                self._problem_at(
                    node,
                    loc,
                    f"values nest deeper than {MAX_DEPTH} levels once aliases are expanded",
                    hint="is an alias used inside the value its anchor names?",
                )
            )
        self.depth += 1
        try:
            if isinstance(node, yaml.SequenceNode) and node.tag == _CORE + "seq":
                return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode) and node.tag == _CORE + "map":
                return self._mapping(node, loc)
            self._unsupported_tag(node, loc)
            return None
        finally:
            self.depth -= 1

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        known = _SCALARS.get(node.tag)
        if known is None:
            self._unsupported_tag(node, loc)
            return None
        kind, construct = known
        if kind == "integer" and len(node.value) > 32:  # int() of thousands of digits is slow, then refused
            return self._refuse(node, loc, "integer out of range (64-bit signed)")
        try:
            value = construct(self.constructor, node)
        except _CONSTRUCTOR_ERRORS:
            return self._refuse(node, loc, f"not a valid {kind}")
        if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
            return self._refuse(node, loc, "integer out of range (64-bit signed)")
        if isinstance(value, str) and (reason := _unusable_text(value)):
            return self._refuse(node, loc, f"the text {reason}")
        return value

    def _unsupported_tag(self, node: yaml.Node, loc: Loc, *, key: bool = False) -> None:
        tag = "!!" + node.tag.removeprefix(_CORE) if node.tag.startswith(_CORE) else node.tag
        hint = "a pipeline holds strings, numbers, booleans, null, dates, lists and mappings only"
        self._refuse(node, loc, f"unsupported YAML tag {tag}", hint=hint, key=key)

    def _refuse(
        self, node: yaml.Node, loc: Loc, message: str, *, hint: str | None = None, key: bool = False
    ) -> None:
        """Report a value (or a key) that cannot be read; the value is left None and not reported again."""
        self.source.problems.append(self._problem_at(node, loc, message, hint=hint))
        if not key:
            self.source.refused.add(loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> Any:
        pairs = [(k, v) for k, v in node.value if not (isinstance(k, yaml.ScalarNode) and k.tag == _MERGE)]
        merges = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.tag == _MERGE]
        references = [k.value for k, _ in pairs if isinstance(k, yaml.ScalarNode) and k.value in SECRET_KEYS]
        if references:
            if len(pairs) == 1 and not merges:
                return self._secret(references[0], pairs[0][1], loc)
            self.source.secret_paths.add(loc)  # whatever it holds is never shown
            self.source.problems.append(
                self.source.problem(
                    loc,
                    f"a secret reference has one key only, as in {{{references[0]}: NAME}}",
                    hint="put the reference alone under the key that needs the secret",
                )
            )
            return None
        result: dict[str, Any] = {}
        for source_node in reversed(self._merge_sources(merges, loc)):  # the first merged mapping wins
            merged = self.build(source_node, loc)
            if isinstance(merged, dict):
                result.update(merged)
        self.source.positions[loc] = _place(node)
        written: set[str] = set()
        for key_node, value_node in pairs:
            key = self._key(key_node, loc)
            if key is None:
                continue
            child = (*loc, key)
            self.source.key_positions[child] = _place(key_node)
            if key in written:
                self.source.problems.append(
                    self.source.problem(child, "duplicate key (YAML would keep only the last)", key=True)
                )
            written.add(key)
            if key in result:
                self._forget(child)  # a merged value replaced by one written here
            result[key] = self.build(value_node, child)
        return result

    def _merge_sources(self, merges: list[yaml.Node], loc: Loc) -> list[yaml.Node]:
        """The mappings ``<<`` keys name, in precedence order."""
        found: list[yaml.Node] = []
        for value in merges:
            items = _target(value).value if isinstance(_target(value), yaml.SequenceNode) else [value]
            for item in items:
                if isinstance(_target(item), yaml.MappingNode):
                    found.append(item)
                else:
                    self.source.problems.append(
                        self._problem_at(
                            item, loc, "`<<` merges a mapping or a list of mappings (e.g. <<: *defaults)"
                        )
                    )
        return found

    def _forget(self, loc: Loc) -> None:
        """Drop what a replaced merged value recorded under ``loc`` (its secrets especially)."""
        self.source.secret_paths = {s for s in self.source.secret_paths if s[: len(loc)] != loc}
        for stale in [s for s in self.source.unresolved if s[: len(loc)] == loc]:
            del self.source.unresolved[stale]

    def _key(self, node: yaml.Node, loc: Loc) -> str | None:
        target = _target(node)
        if not isinstance(target, yaml.ScalarNode):
            self.source.problems.append(
                self._problem_at(
                    node,
                    loc,
                    "a key must be a plain name, not a list or a mapping",
                    hint='quote it: "[a, b]":',
                )
            )
            return None
        if target.tag not in _SCALARS:
            self._unsupported_tag(target, loc, key=True)
            return None
        reason = _unusable_text(target.value)
        if reason:
            self.source.problems.append(self._problem_at(node, loc, f"a key {reason}"))
            return None
        return str(target.value)

    def _secret(self, kind: str, node: yaml.Node, loc: Loc) -> str | None:
        self.source.secret_paths.add(loc)
        target = _target(node)
        ref = target.value if isinstance(target, yaml.ScalarNode) and target.tag in _SCALARS else None
        if not isinstance(ref, str) or not ref.strip() or _unusable_text(ref):
            self.source.problems.append(
                self.source.problem(loc, f"{kind} needs a name, e.g. {{{kind}: NAME}}")
            )
            return None
        if kind == "$credential" and (ref in (".", "..") or "/" in ref):
            self.source.problems.append(
                self.source.problem(loc, f"a credential name is a file name (no '/'), not {ref!r}")
            )
            return None
        if not self.resolve:
            return None
        if kind == "$env":
            return self._env(ref, loc)
        if kind == "$credential":
            directory = self.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                self._unresolved(
                    loc,
                    f"credential {ref!r} cannot be resolved in this environment: $CREDENTIALS_DIRECTORY is "
                    "not set (systemd sets it for a unit with LoadCredential=)",
                    environmental=True,
                )
                return None
            target_path = Path(directory) / ref
        else:
            target_path = Path(ref) if Path(ref).is_absolute() else self.base / ref
        return self._read_secret(kind, ref, target_path, loc)

    def _env(self, name: str, loc: Loc) -> str | None:
        value = self.environ.get(name)
        if value is None:
            self._unresolved(
                loc,
                f"environment variable {name} is not set: the secret cannot be resolved in this environment",
                environmental=True,
                hint=f"export {name}=… before starting, or use {{$file: path}}; " + _UNRESOLVED_HINT,
            )
        elif not value.strip():
            self._unresolved(loc, f"environment variable {name} is empty", environmental=False)
            return None
        return value

    def _read_secret(self, kind: str, ref: str, path: Path, loc: Loc) -> str | None:
        try:
            raw = read_regular_file(path, limit=MAX_SECRET_BYTES)
        except UnusableFileError as exc:
            if kind == "$credential" and exc.errno == errno.ENOENT:
                self._unresolved(
                    loc,
                    f"credential {ref!r} is not loaded: {path} does not exist",
                    environmental=False,
                    hint=f"the unit needs LoadCredential={ref}:/etc/ce-daemon/{ref} (systemctl edit)",
                )
            elif exc.errno in (errno.EACCES, errno.EPERM):
                self._unresolved(
                    loc,
                    f"secret file {path} cannot be resolved in this environment: {exc.reason}",
                    environmental=True,
                )
            else:
                self._unresolved(loc, f"cannot read secret file {path}: {exc.reason}", environmental=False)
            return None
        try:
            value = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            self._unresolved(loc, f"secret file {path} is not UTF-8 text", environmental=False)
            return None
        if not value:
            self._unresolved(loc, f"secret file {path} is empty", environmental=False)
            return None
        if _unusable_text(value):
            self._unresolved(loc, f"secret file {path} holds a NUL character", environmental=False)
            return None
        return value

    def _unresolved(self, loc: Loc, message: str, *, environmental: bool, hint: str | None = None) -> None:
        if hint is None and environmental:
            hint = _UNRESOLVED_HINT
        self.source.unresolved[loc] = Unresolved(self.source.problem(loc, message, hint=hint), environmental)

    def _problem_at(self, node: yaml.Node, loc: Loc, message: str, *, hint: str | None = None) -> Problem:
        line, column = _place(node)
        path = dotted(loc) if len(loc) <= 12 else dotted(loc[:12]) + "…"  # deep inside an expanded alias
        return Problem(self.source.file, path, message, line, column, hint)


def _target(node: yaml.Node) -> yaml.Node:
    return node.target if isinstance(node, Alias) else node


def _place(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _unusable_text(text: str) -> str | None:
    """Why a string cannot be used anywhere (a NUL ends C strings; a lone surrogate is not encodable)."""
    if "\0" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None
