"""Load and validate a pipeline file completely: the one code path ``check``, start and reload share.

Every problem is collected with its place in the file; nothing touches the running system. The core
validates its own sections; each installed job (:mod:`ce_daemon.jobs`) validates and resolves its own.
"""

from __future__ import annotations

import difflib
import hashlib
import ssl
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

from ce_daemon.config.model import Pipeline, Tenant, anchor_paths, compose_pipeline, is_loopback
from ce_daemon.config.secrets import (
    expects_secret,
    inline_secret_problem,
    inline_secrets,
    misplaced_secrets,
    settle_unresolved,
    valid_sections,
)
from ce_daemon.config.source import Loc, Source, read_source
from ce_daemon.config.values import SettingError
from ce_daemon.control import control_socket_path, socket_path_problem
from ce_daemon.errors import ConfigError, Problem
from ce_daemon.files import UnusableFileError, read_regular_file
from ce_daemon.jobs import Job, Jobs, Resolution
from ce_daemon.keys import StreamKey
from ce_daemon.registry import Registry
from ce_daemon.store.sqlite import shared_directory_problem

MAX_CA_FILE_BYTES = 1024**2
"""The largest tenant CA bundle read (Mozilla's whole root store is about 200 KB)."""

SectionT = typing.TypeVar("SectionT", bound=BaseModel)
ResolvedT = typing.TypeVar("ResolvedT")


@dataclass
class LoadedPipeline:
    """A valid pipeline file, resolved: the core's sections, and what each job made of its own."""

    path: Path
    config: Pipeline
    source: Source
    jobs: tuple[Job[Any, Any], ...] = ()
    """The jobs installed when the file was loaded (each resolved its section, present or not)."""
    tenants: dict[str, Tenant] = field(default_factory=dict)
    tenant_fingerprints: dict[str, str] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    """One "now" per load: where a new maintenance iterator starts and where a look-back ends, so that
    no record falls between the two."""
    unverified_secrets: list[Problem] = field(default_factory=list)
    """Secret references left unresolved on request (``check --allow-unresolved-secrets``)."""
    stand_ins: set[Loc] = field(default_factory=set)
    """Places of secrets that hold a stand-in, not the secret: disabled entries' unresolved ones, and
    the unverified ones. A component using one must not be run."""
    warnings: list[Problem] = field(default_factory=list)
    """What is valid but probably not meant (a filter comparing a field to a list literal...), placed
    like problems; ``check`` prints them and the daemon logs them (``config.warning``)."""
    _resolved: dict[str, object] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        """The folder of the pipeline file (relative paths resolve from here)."""
        return self.path.parent

    def resolved(self, job: type[Job[Any, ResolvedT]]) -> ResolvedT:
        """What ``job`` made of its section (KeyError when that job was not installed at load)."""
        value = self._resolved[job.name]
        return typing.cast("ResolvedT", value)

    def resolved_jobs(self) -> list[tuple[Job[Any, Any], object]]:
        """Every job with what it made of its section, by name."""
        return [(job, self._resolved[job.name]) for job in self.jobs]

    def streams(self) -> dict[str, StreamKey]:
        """Every stream any job's consumers subscribe to: the union the pollers must pull."""
        found = {str(s): s for job, resolved in self.resolved_jobs() for s in job.streams(resolved)}
        return dict(sorted(found.items()))

    def place(self, loc: Loc) -> str:
        """``file:line:col`` of ``loc`` in the file (the file alone when it is not written there)."""
        place = self.source.position(loc)
        return f"{self.path}:{place[0]}:{place[1]}" if place else str(self.path)

    def stand_in_under(self, loc: Loc) -> bool:
        """True when a secret at or below ``loc`` holds a stand-in (it was not resolved)."""
        return any(where[: len(loc)] == loc for where in self.stand_ins)

    def section_fingerprint(self, *path: str) -> str:
        """A digest of one raw section of the file (secrets included, never shown)."""
        data: Any = self.source.data
        for part in path:
            data = data.get(part) if isinstance(data, dict) else None
        return digest(data)


def load_pipeline(
    path: Path,
    registry: Registry,
    *,
    jobs: Jobs | None = None,
    environ: Mapping[str, str] | None = None,
    allow_unresolved_secrets: bool = False,
) -> LoadedPipeline:
    """Parse, validate and resolve ``path``; raise :class:`ConfigError` with every problem found.

    ``jobs`` are the installed jobs (discovered when not given): each validates and resolves its
    section. Secrets of disabled entries need not resolve. With ``allow_unresolved_secrets``, neither
    do references this environment cannot resolve (an unset variable, no ``$CREDENTIALS_DIRECTORY``,
    an unreadable file): they get a stand-in, are listed in ``unverified_secrets``, and the rest of
    the file is validated. Only ``check`` may ask for that; nothing may run such a pipeline.
    """
    jobs = Jobs.discover() if jobs is None else jobs
    active = tuple(jobs.loaded())
    model = compose_pipeline(tuple((job.name, job.section) for job in active))
    source = read_source(path, environ=environ)
    problems = list(source.problems)
    if not isinstance(source.data, dict):
        raise ConfigError(problems)
    problems.extend(_failed_jobs(source, jobs))
    problems.extend(misplaced_secrets(source, model, _options_model(active, registry)))
    inactive = {loc for job in active for loc in job.inactive(source)}
    unverified, stand_ins = settle_unresolved(source, problems, allow_unresolved_secrets, inactive)
    failed = {info.name for info in jobs.failed()}
    config: Pipeline | None = None
    try:
        config = model.model_validate({k: v for k, v in source.data.items() if k not in failed})
    except ValidationError as exc:
        problems.extend(pydantic_problems(source, exc, (), model))
    valid = config if config is not None else valid_sections(source, model)
    problems.extend(inline_secrets(source, valid, ()))
    problems.extend(unique_names(source, ("tenants",)))
    resolution = Resolution(source, registry, problems, [])
    resolved = {job.name: job.resolve(resolution, job.settings(config) if config else None) for job in active}
    if config is not None:
        anchored = anchor_paths(config, path.parent.absolute())
        problems.extend(_state_problems(source, anchored))
        problems.extend(_control_problems(source, anchored))
        problems.extend(_cluster_problems(source, anchored))
        problems.extend(_tenant_problems(source, anchored))
        problems.extend(_listener_tls_problems(source, anchored))
        resolution.warnings.extend(_listener_warnings(source, anchored))
    if problems or config is None:
        raise ConfigError(dedupe(problems))
    loaded = LoadedPipeline(
        path=path,
        config=anchor_paths(config, path.parent.absolute()),
        source=source,
        jobs=active,
        unverified_secrets=unverified,
        stand_ins=stand_ins,
        warnings=dedupe(resolution.warnings),
        _resolved=resolved,
    )
    loaded.tenants = {t.name: t for t in config.tenants}
    raw_tenants = source.data.get("tenants") or []
    for index, tenant in enumerate(config.tenants):
        loaded.tenant_fingerprints[tenant.name] = digest(raw_tenants[index])
    return loaded


def _failed_jobs(source: Source, jobs: Jobs) -> list[Problem]:
    """The file has the section of a job that did not load: say which, from where, and why."""
    data = source.data if isinstance(source.data, dict) else {}
    return [
        source.problem(
            (info.name,),
            f"the {info.name!r} job from {info.distribution} {info.version} failed to load: {info.error}",
            key=True,
        )
        for info in jobs.failed()
        if info.name in data
    ]


def _options_model(
    jobs: tuple[Job[Any, Any], ...], registry: Registry
) -> Callable[[Source, Loc], tuple[type[BaseModel] | None, Loc] | None]:
    """Which plugin's model validates a place of the file, asking the job whose section it is in."""
    by_name = {job.name: job for job in jobs}

    def model_at(source: Source, loc: Loc) -> tuple[type[BaseModel] | None, Loc] | None:
        job = by_name.get(str(loc[0])) if loc else None
        return job.options_model(source, registry, loc) if job is not None else None

    return model_at


def unique_names(source: Source, loc: Loc) -> list[Problem]:
    """A problem for each entry of the list at ``loc`` whose ``name`` an earlier entry already has."""
    entries = source.value_at(loc)
    seen: set[str] = set()
    problems: list[Problem] = []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue  # the model reports a name that is not text
        if name in seen:
            problems.append(source.problem((*loc, index, "name"), f"the name {name!r} is used twice"))
        seen.add(name)
    return problems


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
        problems.extend(pydantic_problems(source, exc, loc, model))
    if problems:
        raise ConfigError(dedupe(problems))
    return settings


def digest(value: object) -> str:
    """A short stable digest of plain data (a fingerprint of settings for reload by diff)."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:16]


def dedupe(problems: list[Problem]) -> list[Problem]:
    """``problems`` once each, in the order of the file."""
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.line or 0, p.column or 0))


def pydantic_problems(
    source: Source, exc: ValidationError, prefix: Loc, model: type[BaseModel]
) -> list[Problem]:
    """The problems of a pydantic error of ``model``, validated from ``prefix`` in ``source``, each placed."""
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
        ours = isinstance(error.get("ctx", {}).get("error"), SettingError)  # worded never to quote the value
        if not secret and kind != "missing" and not ours and expects_secret(model, loc[len(prefix) :]):
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


def _tenant_problems(source: Source, config: Pipeline) -> list[Problem]:
    """A tenant's CA bundle that the client could not load: missing, not a regular file, not PEM."""
    problems = []
    for index, tenant in enumerate(config.tenants):
        if tenant.ca_file is None or not tenant.verify_tls:
            continue
        try:
            pem = read_regular_file(tenant.ca_file, limit=MAX_CA_FILE_BYTES)
            ssl.create_default_context().load_verify_locations(cadata=pem.decode("ascii"))
        except UnusableFileError as exc:
            reason = str(exc)
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            reason = f"{tenant.ca_file} holds no usable PEM certificate ({exc})"
        else:
            continue
        problems.append(
            source.problem(
                ("tenants", index, "ca_file"),
                reason,
                hint="a PEM bundle of the CAs that sign the tenant's (or its proxy's) certificate",
            )
        )
    return problems


def _listener_tls_problems(source: Source, config: Pipeline) -> list[Problem]:
    """The listener's certificate or key that `run` could not load: missing, not a regular file, not PEM,
    or not a pair."""
    tls = config.http.tls if config.http is not None else None
    if tls is None or tls.cert is None or tls.key is None:
        return []
    hint = "PEM files: the certificate (chain) and its unencrypted private key, readable by the daemon"
    problems = []
    for key in ("cert", "key"):
        try:
            read_regular_file(getattr(tls, key), limit=MAX_CA_FILE_BYTES)
        except UnusableFileError as exc:
            problems.append(source.problem(("http", "tls", key), str(exc), hint=hint))
    if problems:
        return problems
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert, tls.key, password=_no_password)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = f"{tls.cert} and {tls.key} are not a usable certificate and key ({exc})"
        return [source.problem(("http", "tls", "cert"), reason, hint=hint)]
    return []


def _listener_warnings(source: Source, config: Pipeline) -> list[Problem]:
    """A listener other machines reach over plain HTTP: tokens, passwords and session cookies in clear."""
    http = config.http
    if http is None or http.tls is not None or is_loopback(http.host):
        return []
    return [
        source.problem(
            ("http", "listen"),
            f"the listener on {http.listen} is reachable from other machines over plain HTTP: "
            "tokens, passwords and session cookies cross the network in clear",
            hint="add http.tls (cert and key, or self_signed: true), "
            "or listen on 127.0.0.1 behind a TLS proxy",
        )
    ]


def _no_password() -> bytes:
    """An encrypted key is refused, never prompted for: a daemon has no one to ask."""
    return b""


def _cluster_problems(source: Source, config: Pipeline) -> list[Problem]:
    """A ``cluster:`` section on a SQLite state: that state is one node's (several need PostgreSQL)."""
    if config.cluster is None or config.state.url is not None:
        return []
    return [
        source.problem(
            ("cluster",),
            "a cluster needs a state every node shares: this state is a SQLite file, one node's",
            hint="several nodes need state.url: postgresql://… (or remove the cluster: section)",
            key=True,
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
