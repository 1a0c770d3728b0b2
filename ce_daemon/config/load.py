"""Load and validate a pipeline file completely: the one code path ``check``, start and reload share.

Every problem is collected with its place in the file; nothing touches the running system.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ce_daemon.config.model import Pipeline, Route, SettingError, Tenant, anchor_paths
from ce_daemon.config.secrets import (
    expects_secret,
    inline_secret_problem,
    inline_secrets,
    misplaced_secrets,
    settle_unresolved,
    valid_sections,
)
from ce_daemon.config.source import Loc, Source, read_source
from ce_daemon.control import control_socket_path, socket_path_problem
from ce_daemon.errors import ConfigError, Problem
from ce_daemon.filter import FilterError, FilterProblem, compile_filter
from ce_daemon.logs.mapping import Mapping as LogMapping
from ce_daemon.logs.mapping import MappingError, parse_json_fields
from ce_daemon.netskope.subtypes import normalise_subtype
from ce_daemon.plugin import PluginOptions
from ce_daemon.registry import PluginInfo, Registry
from ce_daemon.store.sqlite import shared_directory_problem

Predicate = Callable[[Mapping[str, Any]], bool]
SectionT = typing.TypeVar("SectionT", bound=BaseModel)


@dataclass(frozen=True)
class Stream:
    """One Netskope data stream: a (tenant, alerts|events, subtype) pulled once for all consumers."""

    tenant: str
    kind: str
    subtype: str

    @property
    def key(self) -> str:
        """The spool's name for it: ``tenant/kind/subtype``."""
        return f"{self.tenant}/{self.kind}/{self.subtype}"


@dataclass(frozen=True)
class Mute:
    """A resolved mute window."""

    name: str
    start: float
    end: float
    predicate: Predicate | None


@dataclass(frozen=True)
class ResolvedRoute:
    """A log route with everything resolved: its streams, filter, mapping and sink."""

    config: Route
    streams: tuple[Stream, ...]
    predicate: Predicate | None
    mutes: tuple[Mute, ...]
    mapping: LogMapping
    sink: PluginInfo
    sink_options: PluginOptions
    fingerprint: str


@dataclass
class LoadedPipeline:
    """A valid pipeline file, resolved, with a fingerprint per component for reload by diff."""

    path: Path
    config: Pipeline
    source: Source
    routes: dict[str, ResolvedRoute] = field(default_factory=dict)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    tenant_fingerprints: dict[str, str] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    """One "now" per load: where a new maintenance iterator starts and where a look-back ends, so that
    no record falls between the two."""
    unverified_secrets: list[Problem] = field(default_factory=list)
    """Secret references left unresolved on request (``check --allow-unresolved-secrets``)."""
    stand_ins: set[Loc] = field(default_factory=set)
    """Places of secrets that hold a stand-in, not the secret: disabled routes' unresolved ones, and
    the unverified ones. A component using one must not be run."""
    warnings: list[Problem] = field(default_factory=list)
    """What is valid but probably not meant (a filter comparing a field to a list literal...), placed
    like problems; ``check`` prints them and the daemon logs them (``config.warning``)."""

    @property
    def base_dir(self) -> Path:
        """The folder of the pipeline file (relative paths resolve from here)."""
        return self.path.parent

    def streams(self) -> dict[str, Stream]:
        """Every stream any consumer subscribes to: the union the pollers must pull."""
        found: dict[str, Stream] = {}
        for route in self.routes.values():
            if route.config.enabled:
                for stream in route.streams:
                    found[stream.key] = stream
        return dict(sorted(found.items()))

    def place_of(self, component: str) -> str:
        """``file:line:col`` of the YAML that defines a component (``route:NAME``, ``poller:TENANT/…``)."""
        kind, _, name = component.partition(":")
        tenant = name.split("/", 1)[0]
        data = self.source.data if isinstance(self.source.data, dict) else {}
        section, wanted = (("logs", "routes"), name) if kind == "route" else (("tenants",), tenant)
        entries: Any = data
        for part in section:
            entries = entries.get(part) if isinstance(entries, dict) else None
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict) and entry.get("name") == wanted:
                place = self.source.position((*section, index))
                if place:
                    return f"{self.path}:{place[0]}:{place[1]}"
        return str(self.path)

    def secrets_resolved(self, route: str) -> bool:
        """True when every secret of the named route was resolved (none is a stand-in)."""
        for index, config in enumerate(self.config.logs.routes):
            if config.name == route:
                where = ("logs", "routes", index)
                return not any(loc[:3] == where for loc in self.stand_ins)
        return True

    def section_fingerprint(self, *path: str) -> str:
        """A digest of one raw section of the file (secrets included, never shown)."""
        data: Any = self.source.data
        for part in path:
            data = data.get(part) if isinstance(data, dict) else None
        return _digest(data)


def load_pipeline(
    path: Path,
    registry: Registry,
    *,
    environ: Mapping[str, str] | None = None,
    allow_unresolved_secrets: bool = False,
) -> LoadedPipeline:
    """Parse, validate and resolve ``path``; raise :class:`ConfigError` with every problem found.

    Secrets of disabled routes need not resolve. With ``allow_unresolved_secrets``, neither do
    references this environment cannot resolve (an unset variable, no ``$CREDENTIALS_DIRECTORY``,
    an unreadable file): they get a stand-in, are listed in ``unverified_secrets``, and the rest of
    the file is validated. Only ``check`` may ask for that; nothing may run such a pipeline.
    """
    source = read_source(path, environ=environ)
    problems = list(source.problems)
    if not isinstance(source.data, dict):
        raise ConfigError(problems)
    problems.extend(misplaced_secrets(source, registry))
    unverified, stand_ins = settle_unresolved(source, problems, allow_unresolved_secrets)
    config: Pipeline | None = None
    try:
        config = Pipeline.model_validate(source.data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(source, exc, (), Pipeline))
    problems.extend(inline_secrets(source, config if config is not None else valid_sections(source), ()))
    resolved = _Resolver(source, registry, problems)
    resolved.check_routes()
    if config is not None:
        anchored = anchor_paths(config, path.parent.absolute())
        problems.extend(_state_problems(source, anchored))
        problems.extend(_control_problems(source, anchored))
    if problems or config is None:
        raise ConfigError(_dedupe(problems))
    loaded = LoadedPipeline(
        path=path,
        config=anchor_paths(config, path.parent.absolute()),
        source=source,
        unverified_secrets=unverified,
        stand_ins=stand_ins,
    )
    loaded.tenants = {t.name: t for t in config.tenants}
    raw_tenants = source.data.get("tenants") or []
    for index, tenant in enumerate(config.tenants):
        loaded.tenant_fingerprints[tenant.name] = _digest(raw_tenants[index])
    loaded.routes = resolved.build_routes(config)
    if problems:
        raise ConfigError(_dedupe(problems))
    loaded.warnings = _dedupe(resolved.warnings)
    return loaded


def section_settings(source: Source, model: type[SectionT], *loc: str) -> SectionT:
    """``model`` validated from the section at ``loc`` of ``source`` (its defaults when it is absent).

    For commands that need a few settings of a file that may not load as a whole (``status``, ``dlq
    list``): :class:`ConfigError` with every problem of that section, placed in the file.
    """
    prefix = ".".join(loc)
    problems = [
        p for p in source.problems if p.path == prefix or p.path.startswith((f"{prefix}.", f"{prefix}["))
    ]
    value = source.value_at(loc)
    try:
        settings = model.model_validate({} if value is None else value)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(source, exc, loc, model))
    if problems:
        raise ConfigError(_dedupe(problems))
    return settings


class _Resolver:
    """The checks that need more than the model: plugins, filters, subtypes, mappings, references."""

    def __init__(self, source: Source, registry: Registry, problems: list[Problem]) -> None:
        self.source = source
        self.registry = registry
        self.problems = problems
        self.warnings: list[Problem] = []
        self.sinks: dict[int, tuple[PluginInfo, PluginOptions]] = {}
        self.predicates: dict[Loc, Predicate | None] = {}
        self.streams: dict[int, tuple[Stream, ...]] = {}
        self.mappings: dict[int, LogMapping] = {}

    def _raw_routes(self) -> list[tuple[int, dict[str, Any]]]:
        data = self.source.data
        logs = data.get("logs") if isinstance(data, dict) else None
        routes = logs.get("routes") if isinstance(logs, dict) else None
        if not isinstance(routes, list):
            return []
        return [(i, r) for i, r in enumerate(routes) if isinstance(r, dict)]

    def check_routes(self) -> None:
        data = self.source.data
        tenants = (
            [t.get("name") for t in (data.get("tenants") or []) if isinstance(t, dict)]
            if isinstance(data.get("tenants"), list)
            else []
        )
        self._unique("tenants", tenants)
        routes = self._raw_routes()
        self._unique(("logs", "routes"), [r.get("name") for _, r in routes])
        for index, raw in routes:
            loc: Loc = ("logs", "routes", index)
            tenant = raw.get("tenant")
            if isinstance(tenant, str) and tenants and tenant not in tenants:
                close = difflib.get_close_matches(tenant, [str(t) for t in tenants], n=1)
                self.problems.append(
                    self.source.problem(
                        (*loc, "tenant"),
                        f"no tenant named {tenant!r}",
                        hint=(f"did you mean {close[0]!r}? " if close else "")
                        + f"tenants: {', '.join(map(str, tenants))}",
                    )
                )
            self._streams(index, raw, loc)
            self._sink(index, raw.get("sink"), (*loc, "sink"))
            self.predicates[(*loc, "filter")] = self._filter(raw.get("filter"), (*loc, "filter"))
            mutes = raw.get("mute")
            for m, mute in enumerate(mutes if isinstance(mutes, list) else []):
                if isinstance(mute, dict):
                    self.predicates[(*loc, "mute", m)] = self._filter(
                        mute.get("filter"), (*loc, "mute", m, "filter")
                    )
            self._mapping(index, raw, loc)
            self._fields(raw, loc)

    def _unique(self, section: str | tuple[str, ...], names: list[Any]) -> None:
        base = (section,) if isinstance(section, str) else section
        seen: set[Any] = set()
        for i, name in enumerate(names):
            if not isinstance(name, str):
                continue  # the model reports a name that is not text
            if name in seen:
                self.problems.append(
                    self.source.problem((*base, i, "name"), f"the name {name!r} is used twice")
                )
            seen.add(name)

    def _streams(self, index: int, raw: dict[str, Any], loc: Loc) -> None:
        tenant = raw.get("tenant") if isinstance(raw.get("tenant"), str) else "?"
        found: list[Stream] = []
        for kind in ("alerts", "events"):
            names = raw.get(kind) or []
            if not isinstance(names, list):
                continue
            for i, name in enumerate(names):
                if not isinstance(name, str):
                    continue
                try:
                    found.append(Stream(str(tenant), kind, normalise_subtype(kind, name)))
                except ValueError as exc:
                    self.problems.append(self.source.problem((*loc, kind, i), str(exc)))
        if not found and isinstance(raw.get("name"), str):
            self.problems.append(
                self.source.problem(
                    loc,
                    "the route reads nothing",
                    hint="list subtypes under `alerts:` and/or `events:` (e.g. alerts: [dlp])",
                )
            )
        self.streams[index] = tuple(dict.fromkeys(found))

    def _sink(self, index: int, raw: object, loc: Loc) -> None:
        if not isinstance(raw, dict):
            return  # the model reports the wrong shape
        kind = "log_sink"
        type_name = raw.get("type")
        if not isinstance(type_name, str):
            self.problems.append(
                self.source.problem(
                    (*loc, "type"), "the sink needs a `type:`", hint=self.registry.unknown_hint(kind, "")
                )
            )
            return
        info = self.registry.get(kind, type_name)
        if info is None:
            self.problems.append(
                self.source.problem(
                    (*loc, "type"),
                    f"unknown log sink type {type_name!r}",
                    hint=self.registry.unknown_hint(kind, type_name),
                )
            )
            return
        if info.cls is None:
            self.problems.append(
                self.source.problem(
                    (*loc, "type"),
                    f"the {type_name!r} plugin from {info.distribution} {info.version} failed to load: "
                    f"{info.error}",
                )
            )
            return
        options = {k: v for k, v in raw.items() if k != "type"}
        try:
            self.sinks[index] = (info, info.cls.Options.model_validate(options))
        except ValidationError as exc:
            self.problems.extend(_pydantic_problems(self.source, exc, loc, info.cls.Options))
            return
        except Exception as exc:  # noqa: BLE001 - a plugin's validator that fails otherwise must not crash check
            self.problems.append(
                self.source.problem(
                    loc,
                    f"the {type_name!r} plugin failed to validate these options ({type(exc).__name__})",
                    hint=f"a bug of {info.distribution} {info.version}: please report it with the options",
                )
            )
            return
        self.problems.extend(inline_secrets(self.source, self.sinks[index][1], loc))

    def _filter(self, spec: object, loc: Loc) -> Predicate | None:
        if spec is None:
            return None
        inside = not isinstance(spec, str)  # a JSON-string filter's locs point inside the string
        warnings: list[FilterProblem] = []
        try:
            return compile_filter(spec, warnings=warnings)
        except FilterError as exc:
            for problem in exc.problems:
                where = (*loc, *problem.loc) if inside else loc
                self.problems.append(
                    self.source.problem(where, problem.message, key=inside and problem.at_key)
                )
            return None
        finally:
            for warning in warnings:
                where = (*loc, *warning.loc) if inside else loc
                self.warnings.append(self.source.problem(where, warning.message))

    def _fields(self, raw: dict[str, Any], loc: Loc) -> None:
        fields = raw.get("fields")
        if fields is None:
            return
        if raw.get("format", "cef") != "json":
            self.problems.append(
                self.source.problem((*loc, "fields"), "`fields` applies to `format: json` only")
            )
            return
        try:
            parse_json_fields(fields, source=self.source.file)
        except MappingError as exc:
            for problem in exc.problems:
                self.problems.append(self.source.problem((*loc, "fields"), str(problem)))

    def _mapping(self, index: int, raw: dict[str, Any], loc: Loc) -> None:
        name = raw.get("mapping", "netskope")
        if not isinstance(name, str):
            return
        try:
            if "/" in name or name.endswith(".json"):
                path = Path(name)
                mapping = LogMapping.load(
                    path if path.is_absolute() else Path(self.source.file).parent / path
                )
            else:
                mapping = LogMapping.builtin(name)
        except MappingError as exc:
            for problem in exc.problems:
                # said as the mapping file's own place (file:line:col: json.path: message), hint apart
                where = dataclasses.replace(problem, hint=None).render()
                self.problems.append(self.source.problem((*loc, "mapping"), where, hint=problem.hint))
            return
        except (OSError, ValueError) as exc:
            self.problems.append(
                self.source.problem((*loc, "mapping"), f"cannot load mapping {name!r}: {exc}")
            )
            return
        if raw.get("format", "cef") != "json":
            for stream in self.streams.get(index, ()):
                if not mapping.covers(stream.kind, stream.subtype):
                    self.problems.append(
                        self.source.problem(
                            (*loc, "mapping"),
                            f"mapping {name!r} has no taxonomy for {stream.kind} {stream.subtype!r}",
                            hint="add it to the mapping file, or use the built-in `netskope` mapping",
                        )
                    )
        self.mappings[index] = mapping

    def build_routes(self, config: Pipeline) -> dict[str, ResolvedRoute]:
        routes: dict[str, ResolvedRoute] = {}
        raw_routes = dict(self._raw_routes())
        for index, route in enumerate(config.logs.routes):
            loc: Loc = ("logs", "routes", index)
            sink, options = self.sinks[index]
            mutes = tuple(
                Mute(m.name, m.start.timestamp(), m.end.timestamp(), self.predicates.get((*loc, "mute", i)))
                for i, m in enumerate(route.mute)
            )
            mapping = self.mappings[index]
            routes[route.name] = ResolvedRoute(
                config=route,
                streams=self.streams[index],
                predicate=self.predicates.get((*loc, "filter")),
                mutes=mutes,
                mapping=mapping,
                sink=sink,
                sink_options=options,
                fingerprint=_digest([raw_routes.get(index), mapping.fingerprint, sink.version]),
            )
        return routes


def _digest(value: object) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:16]


def _dedupe(problems: list[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.line or 0, p.column or 0))


def _pydantic_problems(
    source: Source, exc: ValidationError, prefix: Loc, model: type[BaseModel]
) -> list[Problem]:
    problems: list[Problem] = []
    errors = exc.errors(include_url=False)
    # a misspelt required key yields "unknown key" and "missing"; report it once, as the misspelling
    misspelt: set[Loc] = set()
    for error in errors:
        if error["type"] == "extra_forbidden":
            extra = _error_loc(source, prefix, error["loc"], missing=False)
            valid = _fields_at(model, extra[len(prefix) : -1])
            written = str(extra[-1]) if extra else ""
            misspelt.update(
                (*extra[:-1], c) for c in difflib.get_close_matches(written, valid, n=1, cutoff=0.6)
            )
    for error in errors:
        kind = error["type"]
        loc = _error_loc(source, prefix, error["loc"], missing=kind == "missing")
        secret = source.is_secret(loc)
        value = error.get("input")
        if (secret and value is None) or loc in source.unresolved or loc in source.refused:
            continue  # already reported where it is written: an unresolved reference, an unreadable value
        hint = None
        if kind == "extra_forbidden":
            valid = _fields_at(model, loc[len(prefix) : -1])
            name = loc[-1] if loc else ""
            close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
            message = f"unknown key {name!r}"
            if close:
                hint = f"did you mean {close[0]!r}?"
            elif valid:
                hint = f"valid keys here: {', '.join(valid)}"
            problems.append(source.problem(loc, message, hint=hint, key=True))
            continue
        if kind == "missing" and loc in misspelt:
            continue
        if not secret and kind != "missing" and expects_secret(model, loc[len(prefix) :]):
            problems.append(inline_secret_problem(source, loc))  # never quote what was written there
            continue
        message, hint = _message_and_hint(error, loc, secret=secret)
        problems.append(source.problem(loc, message, hint=hint))
    return problems


def _message_and_hint(error: ErrorDetails, loc: Loc, *, secret: bool) -> tuple[str, str | None]:
    """What to say of a pydantic error at ``loc``, and a hint where a common mistake is likely."""
    kind, value = error["type"], error.get("input")
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, SettingError):  # a validator of ours that says what would be right
        return str(cause), cause.hint
    if kind == "string_type" and isinstance(value, int | float | bool) and not secret:
        return error["msg"], f"YAML read this as {type(value).__name__} {value!r}; put the value in quotes"
    if (
        kind in {"int_parsing", "float_parsing", "int_type", "float_type"}
        and isinstance(value, str)
        and not secret
    ):
        return error["msg"], "give a plain number (no units or words)"
    if kind == "missing" and loc:
        return f"required key {loc[-1]!r} is missing", None
    return error["msg"], None


def _error_loc(source: Source, prefix: Loc, parts: tuple[int | str, ...], *, missing: bool) -> Loc:
    """Where in the file a pydantic error is: its loc without the union and validator tags pydantic adds.

    Tags (``function-after[...]``, ``str``, a discriminator's value) are told apart from keys by
    walking the data itself, so a key of any spelling (``"a[0]"``, ``str``) keeps its place.
    """
    data = source.value_at(prefix)
    loc: list[str | int] = list(prefix)
    for position, part in enumerate(parts):
        in_dict = isinstance(data, dict) and part in data
        if in_dict or (isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)):
            data = data[part]  # type: ignore[index] # a dict holding the key, or a list long enough
            loc.append(part)
        elif missing and position == len(parts) - 1:
            loc.append(part)  # the required key, absent from the data
    return tuple(loc)


def _state_problems(source: Source, config: Pipeline) -> list[Problem]:
    """A state directory other users may write to cannot be used, whoever runs the daemon."""
    reason = shared_directory_problem(config.state.path.parent)
    if reason is None:
        return []
    return [
        source.problem(
            ("state", "path"),
            reason,
            hint="give ce-daemon a directory of its own (created 0700 when missing), e.g. /var/lib/ce-daemon",
        )
    ]


def _control_problems(source: Source, config: Pipeline) -> list[Problem]:
    """A control socket path no daemon could listen on (where that is told without trying)."""
    reason = socket_path_problem(control_socket_path(config))
    if reason is None:
        return []
    return [
        source.problem(
            ("control", "socket") if config.control.socket else ("state", "path"),
            reason,
            hint="leave `control.socket` unset (control.sock beside the state database), or name a path "
            "in a local directory the daemon's user may write to",
        )
    ]


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys valid at ``loc`` inside ``model`` (for a misspelt-key hint)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = typing.get_args(current)
            current = args[0] if args else None
        elif isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(members[0]) if len(members) == 1 else annotation
    return annotation
