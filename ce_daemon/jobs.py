"""The job contract: what a job (logs, and later threats, tickets, risk) gives the core, and how it is found.

A job is a package that plugs into the core the way a plugin does, through the entry-point group
``ce_daemon.jobs`` (the entry-point name is its YAML section). It declares:

- its section (``section``, a pydantic model the loader composes into the pipeline's, so that its
  problems are reported at their ``file:line:col`` like every other);
- its state migrations (``migrations``), applied with the spool's when the state database opens;
- how it resolves its section against the rest of the file (:meth:`Job.resolve`: plugins, filters,
  references, each problem with its place);
- the components it plans from a loaded pipeline (:meth:`Job.plan`, each with a fingerprint for
  reload by diff) and the Netskope streams its consumers read (:meth:`Job.streams`: the core runs
  one poller per stream, the union over every job);
- its part of ``ce-daemon status`` (:meth:`Job.status`), its metrics (:meth:`Job.register_metrics`),
  its CLI subcommands (:meth:`Job.add_commands`), its HTTP API routes (:meth:`Job.api_routes`) and
  its dashboard pages (:meth:`Job.dashboard_pages`).

The core names no job: it asks each discovered one. A job that fails to import is reported with its
distribution and the error, and only matters when the file has its section.
"""

from __future__ import annotations

import argparse
import difflib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ce_daemon.config.model import Pipeline
from ce_daemon.config.secrets import inline_secrets
from ce_daemon.config.source import Loc, Source
from ce_daemon.errors import Problem
from ce_daemon.filter import FilterError, FilterProblem, Predicate, compile_filter
from ce_daemon.keys import StreamKey
from ce_daemon.plugin import PluginOptions
from ce_daemon.registry import PluginInfo, Registry, api_compatibility
from ce_daemon.store import Migration

if TYPE_CHECKING:
    from ce_daemon.api import ApiRoute
    from ce_daemon.config.load import LoadedPipeline
    from ce_daemon.dashboard import Page
    from ce_daemon.metrics import Metrics
    from ce_daemon.pipeline import ComponentSpec, Runtime

__all__ = ["API_VERSION", "ENTRY_POINTS", "OLDEST_API_VERSION", "Job", "JobInfo", "Jobs", "Resolution"]

API_VERSION: Final = 1
"""The version of the job contract this core provides (bumped like the plugin API's, see plugin.py)."""
OLDEST_API_VERSION: Final = 1
"""The oldest ``api_version`` of a job this core still loads."""
ENTRY_POINTS: Final = "ce_daemon.jobs"
"""The entry-point group jobs register in: ``name = "package.module:JobClass"``, name = YAML section."""

SectionT = TypeVar("SectionT", bound=BaseModel)
ResolvedT = TypeVar("ResolvedT")
SubParsers = argparse._SubParsersAction
"""What ``add_subparsers()`` returns (argparse names it no other way): where a job adds its commands."""


@dataclass
class Resolution:
    """What a job's :meth:`Job.resolve` reads (the file, the installed plugins) and where it reports."""

    source: Source
    registry: Registry
    problems: list[Problem]
    """Every problem found, with its place: the file is refused when any is found."""
    warnings: list[Problem]
    """What is valid but probably not meant (printed by ``check``, logged by the daemon)."""

    def entries(self, section: str, key: str) -> list[tuple[int, dict[str, Any]]]:
        """The raw entries of ``<section>.<key>`` that are mappings, with their index (a list of another
        shape gives none: the section's model reports it)."""
        data = self.source.data
        part = data.get(section) if isinstance(data, dict) else None
        listed = part.get(key) if isinstance(part, dict) else None
        if not isinstance(listed, list):
            return []
        return [(index, entry) for index, entry in enumerate(listed) if isinstance(entry, dict)]

    def tenants(self) -> list[str]:
        """The names of the raw ``tenants:`` (whatever shape the section has)."""
        data = self.source.data
        listed = data.get("tenants") if isinstance(data, dict) else None
        return [
            str(t.get("name")) for t in (listed if isinstance(listed, list) else []) if isinstance(t, dict)
        ]

    def unknown(self, loc: Loc, what: str, name: str, known: list[str]) -> None:
        """Report that ``name`` at ``loc`` names no ``what``, with the nearest of ``known`` as a hint."""
        close = difflib.get_close_matches(name, known, n=1)
        self.problems.append(
            self.source.problem(
                loc,
                f"no {what} named {name!r}",
                hint=(f"did you mean {close[0]!r}? " if close else "")
                + f"{what}s: {', '.join(known) or 'none'}",
            )
        )

    def plugin(self, kind: str, raw: object, loc: Loc, what: str) -> tuple[PluginInfo, PluginOptions] | None:
        """The plugin of ``kind`` a raw ``{type: …, options…}`` mapping at ``loc`` names, with its
        validated options; None (each problem reported at its place) when anything is wrong.
        ``what`` names the thing in messages (``log sink``, ``threat source``)."""
        if not isinstance(raw, dict):
            return None  # the section's model reports the wrong shape
        type_name = raw.get("type")
        if not isinstance(type_name, str):
            self.problems.append(
                self.source.problem(
                    (*loc, "type"), f"the {what} needs a `type:`", hint=self.registry.unknown_hint(kind, "")
                )
            )
            return None
        info = self.registry.get(kind, type_name)
        if info is None or info.cls is None:
            message = (
                f"unknown {what} type {type_name!r}"
                if info is None
                else f"the {type_name!r} plugin from {info.distribution} {info.version} failed to load: "
                f"{info.error}"
            )
            hint = self.registry.unknown_hint(kind, type_name) if info is None else None
            self.problems.append(self.source.problem((*loc, "type"), message, hint=hint))
            return None
        from ce_daemon.config.load import pydantic_problems  # the loader imports this module

        options = {k: v for k, v in raw.items() if k != "type"}
        try:
            validated = info.cls.Options.model_validate(options)
        except ValidationError as exc:
            self.problems.extend(pydantic_problems(self.source, exc, loc, info.cls.Options))
            return None
        except Exception as exc:  # noqa: BLE001 - a plugin's validator that fails otherwise must not crash check
            self.problems.append(
                self.source.problem(
                    loc,
                    f"the {type_name!r} plugin failed to validate these options ({type(exc).__name__})",
                    hint=f"a bug of {info.distribution} {info.version}: please report it with the options",
                )
            )
            return None
        self.problems.extend(inline_secrets(self.source, validated, loc))
        return info, validated

    def filter(self, spec: object, loc: Loc) -> Predicate | None:
        """The compiled filter written at ``loc`` (None when there is none or it is wrong: reported)."""
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


class Job(ABC, Generic[SectionT, ResolvedT]):
    """One job. Subclasses set :attr:`name`, :attr:`section` and implement :meth:`resolve` and :meth:`plan`.

    ``SectionT`` is the section's model, ``ResolvedT`` what :meth:`resolve` makes of it: what the
    job's components are built from, held by the loaded pipeline (:meth:`LoadedPipeline.resolved`).
    """

    name: ClassVar[str]
    """The YAML section, and the entry-point name the job registers under."""
    section: ClassVar[type[BaseModel]]
    """The section's model (``SectionT``); its defaults apply when the file has no such section."""
    migrations: ClassVar[tuple[Migration, ...]] = ()
    """The job's tables, versioned (see :class:`~ce_daemon.store.Migration`)."""
    api_version: ClassVar[int] = API_VERSION
    """The job contract version the job was written for."""

    def settings(self, config: Pipeline) -> SectionT:
        """The job's validated section of ``config`` (its defaults when the file has none)."""
        value: SectionT = getattr(config, self.name)
        return value

    @abstractmethod
    def resolve(self, resolution: Resolution, section: SectionT | None) -> ResolvedT | None:
        """Check the raw section (``resolution.source``) beyond its model; report every problem with its
        place in ``resolution.problems``. ``section`` is the validated model, None when the file failed
        validation (check the raw data anyway, so that one pass reports everything). Return what the
        components are built from, or None when anything is wrong.
        """

    @abstractmethod
    def plan(self, loaded: LoadedPipeline, resolved: ResolvedT, runtime: Runtime) -> Iterable[ComponentSpec]:
        """The job's components for ``loaded``, each with a fingerprint of what built it."""

    def streams(self, resolved: ResolvedT) -> Iterable[StreamKey]:
        """The Netskope streams the job's consumers read (the core plans one poller for each)."""
        return ()

    def inactive(self, source: Source) -> set[Loc]:
        """Places in the raw file whose secrets need not resolve (entries switched off)."""
        return set()

    def options_model(
        self, source: Source, registry: Registry, loc: Loc
    ) -> tuple[type[BaseModel] | None, Loc] | None:
        """The model that validates ``loc`` when a plugin's does (a sink's options), and the place in it;
        None when the section's own model does; ``(None, ())`` when nothing validates it (the options
        of an unknown plugin: never shown, so a secret reference there is left alone)."""
        return None

    def plugins(self, resolved: ResolvedT) -> Iterable[PluginInfo]:
        """The plugins the section uses (``check`` prints their notes)."""
        return ()

    def secret_holders(self, resolved: ResolvedT) -> Iterable[object]:
        """Validated values beyond the section holding ``SecretStr`` fields (a plugin's options)."""
        return ()

    def api_routes(self) -> Iterable[ApiRoute]:
        """The job's HTTP API routes, mounted under ``/api/v1/<name>`` (handlers get the resolved section
        of the running pipeline; a pipeline without the section answers 404)."""
        return ()

    def dashboard_pages(self) -> Iterable[Page]:
        """The job's dashboard pages, mounted under ``/ui/<name>`` (reads only)."""
        return ()

    def summary(self, resolved: ResolvedT) -> str | None:
        """What ``check`` says the job will run (``2 log route(s)``), or None."""
        return None

    async def status(
        self, loaded: LoadedPipeline, resolved: ResolvedT, runtime: Runtime
    ) -> dict[str, Any] | None:
        """The job's section of ``ce-daemon status`` (scalars, shown as ``key=value``), or None."""
        return None

    def register_metrics(self, metrics: Metrics) -> None:
        """Add the job's metric families to ``metrics`` (its own collectors read the live components)."""

    def add_commands(self, commands: SubParsers[argparse.ArgumentParser]) -> None:
        """Add the job's CLI subcommands; each sets ``func`` (``args -> exit code``) as its default."""


@dataclass(frozen=True)
class JobInfo:
    """One discovered job: where it comes from and whether it loaded."""

    name: str
    target: str
    distribution: str
    version: str
    job: Job[Any, Any] | None
    error: str | None
    note: str | None = None


class Jobs:
    """Every job installed, by name (its YAML section)."""

    def __init__(self, infos: Iterable[JobInfo]) -> None:
        self._infos = {info.name: info for info in infos}

    @classmethod
    def discover(cls) -> Jobs:
        """Load every entry point of :data:`ENTRY_POINTS` (``CE_DAEMON_JOBS=a,b`` limits which)."""
        only = {n.strip() for n in os.environ.get("CE_DAEMON_JOBS", "").split(",") if n.strip()}
        return cls(_load(ep) for ep in entry_points(group=ENTRY_POINTS) if not only or ep.name in only)

    def all(self) -> list[JobInfo]:
        """Every job, loaded or not, by name."""
        return sorted(self._infos.values(), key=lambda info: info.name)

    def loaded(self) -> list[Job[Any, Any]]:
        """The jobs that loaded, by name."""
        return [info.job for info in self.all() if info.job is not None]

    def failed(self) -> list[JobInfo]:
        """The jobs that did not load."""
        return [info for info in self.all() if info.job is None]

    def migrations(self) -> tuple[Migration, ...]:
        """Every loaded job's migrations."""
        return tuple(m for job in self.loaded() for m in job.migrations)


def _load(ep: EntryPoint) -> JobInfo:
    dist = ep.dist.name if ep.dist else "?"
    version = ep.dist.version if ep.dist else "?"

    def refused(error: str) -> JobInfo:
        return JobInfo(ep.name, ep.value, dist, version, None, error)

    try:
        obj = ep.load()
        job = obj() if isinstance(obj, type) and issubclass(obj, Job) else None
    except Exception as exc:  # noqa: BLE001 - any failure of a job's import or constructor is reported
        return refused(f"{type(exc).__name__}: {exc}")
    error, note = (
        (f"{ep.value} is not a Job subclass", None) if job is None else _contract_problem(job, ep.name, dist)
    )
    if error is not None:
        return refused(error)
    return JobInfo(ep.name, ep.value, dist, version, job, None, note)


def _contract_problem(
    job: Job[Any, Any], registered: str, distribution: str
) -> tuple[str | None, str | None]:
    """``(error, note)`` for a job registered as ``registered``: its name, section and contract version."""
    if getattr(job, "name", None) != registered:
        return f"the job declares name {getattr(job, 'name', None)!r}, registered as {registered!r}", None
    if registered in Pipeline.model_fields:
        return f"{registered!r} is a section of the core, not a job's", None
    section = getattr(job, "section", None)
    if not (isinstance(section, type) and issubclass(section, BaseModel)):
        return "its section is not a pydantic model", None
    return api_compatibility(job.api_version, distribution, current=API_VERSION, oldest=OLDEST_API_VERSION)
