"""Secrets in a pipeline: references only, where a secret goes, resolved or told apart.

The reader (``source.py``) resolves ``{$env: …}``, ``{$file: …}`` and ``{$credential: …}`` and
remembers where each one is. This module holds the rules that need the validated models:

* a secret field (any :class:`~pydantic.SecretStr`, in the core's models or a plugin's options,
  found by walking the validated model) must hold a reference: a value written in the file is
  refused without being shown, with a hint for the usual mistakes (``${NAME}``, a quoted
  reference);
* a reference anywhere else is refused and its value dropped, since messages quote what names,
  types and subtypes hold;
* a reference that cannot be resolved is a problem, unless its entry is disabled (a job says which)
  or ``check`` was asked to skip those only another environment can resolve; either way it gets a
  stand-in value that nothing may run with.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Final

from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from ce_daemon.config.model import Pipeline
from ce_daemon.config.source import Loc, Source
from ce_daemon.config.values import SecretAllowed
from ce_daemon.errors import Problem

STAND_IN: Final = "unresolved-secret-stand-in"
"""What an unresolved secret holds when it is allowed to stay unresolved; never sent anywhere."""

_REFERENCE_FORMS: Final = (
    "{$env: NAME}, {$file: /etc/ce-daemon/NAME} or {$credential: NAME} (systemd LoadCredential=)"
)
_QUOTED_REFERENCE: Final = re.compile(r"\{\s*(\$(?:env|file|credential))\s*:\s*([^{}\s][^{}]*?)\s*\}")
_BRACED_VARIABLE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BARE_VARIABLE: Final = re.compile(r"\$[A-Z_][A-Z0-9_]*")


def settle_unresolved(
    source: Source, problems: list[Problem], allow: bool, inactive: set[Loc]
) -> tuple[list[Problem], set[Loc]]:
    """Which unresolved references are problems (added to ``problems``); the others get a stand-in.

    The secrets of an ``inactive`` entry (a disabled route) are not needed; with ``allow``, neither
    are those another environment may resolve. Returns the problems left unreported on request, and
    the place of every stand-in.
    """
    unverified: list[Problem] = []
    stand_ins: set[Loc] = set()
    for loc, item in source.unresolved.items():
        unused = any(loc[:length] in inactive for length in range(len(loc) + 1))
        if unused or (allow and item.environmental):
            _put(source.data, loc, STAND_IN)
            stand_ins.add(loc)
            if not unused:
                unverified.append(item.problem)
        else:
            problems.append(item.problem)
    return unverified, stand_ins


OptionsModel = Callable[[Source, Loc], tuple[type[BaseModel] | None, Loc] | None]
"""Which plugin's options model validates a place of the file and the place inside it; None: the file's
own model does; ``(None, ())``: nothing does (the options of an unknown plugin)."""


def misplaced_secrets(source: Source, model: type[Pipeline], options_model: OptionsModel) -> list[Problem]:
    """A reference where no secret is expected is a problem, and its value is dropped unseen."""
    problems: list[Problem] = []
    for loc in sorted(source.secret_paths, key=repr):
        found, inside = options_model(source, loc) or (model, loc)
        if found is None:
            continue  # in the options of a plugin that is unknown: never validated, never shown
        if expects_secret(found, inside):
            continue
        problems.append(
            source.problem(
                loc,
                "a secret reference where no secret is expected",
                hint="references go where a token, a password or a key is expected",
            )
        )
        source.unresolved.pop(loc, None)
        source.refused.add(loc)
        if loc:
            _put(source.data, loc, None)
    return problems


def valid_sections(source: Source, model: type[Pipeline]) -> dict[str, object]:
    """The sections of ``model`` that validate on their own (for a file whose whole does not)."""
    data = source.data if isinstance(source.data, dict) else {}
    valid: dict[str, object] = {}
    for name, info in model.model_fields.items():
        if name in data:
            adapter: TypeAdapter[Any] = TypeAdapter(info.annotation or Any)
            try:
                valid[name] = adapter.validate_python(data[name])
            except ValidationError:
                continue
    return valid


def inline_secrets(source: Source, value: object, loc: Loc) -> list[Problem]:
    """A problem for each secret field in the validated ``value`` (found at ``loc``) written inline."""
    return [
        inline_secret_problem(source, where)
        for where in _secret_fields(value, loc)
        if where in source.positions and not source.is_secret(where)
    ]


def inline_secret_problem(source: Source, loc: Loc) -> Problem:
    """The problem of a secret field holding anything but a reference; what it holds is never shown."""
    value = source.value_at(loc)
    text = value.strip() if isinstance(value, str) else None
    if text is None:
        return source.problem(loc, "expects a secret reference", hint=f"write {_REFERENCE_FORMS}")
    if quoted := _QUOTED_REFERENCE.fullmatch(text):
        return source.problem(
            loc,
            f"this is text that looks like a {quoted[1]} reference: in quotes, YAML reads it as a string",
            hint=f"remove the quotes: {{{quoted[1]}: {quoted[2]}}}",
        )
    if braced := _BRACED_VARIABLE.fullmatch(text):
        return source.problem(
            loc,
            "${…} is not expanded: ce-daemon substitutes no variables in text",
            hint=f"refer to the variable: {{$env: {braced[1]}}}",
        )
    if _BARE_VARIABLE.fullmatch(text):
        return source.problem(
            loc,
            "this looks like a shell variable, which ce-daemon does not expand",
            hint="refer to the variable: {$env: NAME}",
        )
    return source.problem(
        loc, "a secret must not be written in the file", hint=f"refer to it: {_REFERENCE_FORMS}"
    )


def expects_secret(model: type[BaseModel], loc: Loc) -> bool:
    """True when ``loc`` inside ``model`` may hold a secret: a :class:`SecretStr` field, or text marked
    :data:`~ce_daemon.config.values.SecretOrText` (through unions, lists and mappings too)."""
    candidates: list[Any] = [model]
    for part in loc:
        following: list[Any] = []
        for option in (member for current in candidates for member in _members(current)):
            if isinstance(part, int):
                following.extend(typing.get_args(option)[:1])
            elif typing.get_origin(option) is dict:
                following.extend(typing.get_args(option)[1:2])
            elif isinstance(option, type) and issubclass(option, BaseModel) and part in option.model_fields:
                info = option.model_fields[part]
                following.append(
                    Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
                )
        candidates = following
    return any(_may_hold_secret(current) for current in candidates)


def _may_hold_secret(annotation: Any) -> bool:
    """A :class:`SecretStr`, or text marked :class:`SecretAllowed`, among ``annotation``'s alternatives."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *metadata = typing.get_args(annotation)
        return any(isinstance(m, SecretAllowed) for m in metadata) or _may_hold_secret(inner)
    if origin in (typing.Union, types.UnionType):
        return any(_may_hold_secret(alternative) for alternative in typing.get_args(annotation))
    return annotation is SecretStr


def _secret_fields(value: object, loc: Loc) -> Iterator[Loc]:
    """The place of every secret in a validated value, found by walking it: each :class:`SecretStr`,
    and each entry named like a credential (``Authorization``, ``X-Api-Key``…) of a mapping of
    :data:`~ce_daemon.config.values.SecretOrText` (extra HTTP headers)."""
    if isinstance(value, SecretStr):
        yield loc
    elif isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            here, item = (*loc, info.alias or name), getattr(value, name)
            if isinstance(item, dict) and _holds_text_or_secret(info.annotation):
                yield from ((*here, key) for key in item if CREDENTIAL_NAME.search(str(key)))
            yield from _secret_fields(item, here)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _secret_fields(item, (*loc, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_fields(item, (*loc, str(key)))


CREDENTIAL_NAME: Final = re.compile(r"auth|token|secret|passw|api[-_]?key|cookie|signature", re.IGNORECASE)
"""Header names whose value is a credential: written in the file, it would be a secret written inline."""


def _holds_text_or_secret(annotation: Any) -> bool:
    """True for a ``dict[str, SecretOrText]`` annotation (possibly optional)."""
    return any(
        typing.get_origin(member) is dict and _may_hold_secret(typing.get_args(member)[1])
        for member in _members(annotation)
    )


def _members(annotation: Any) -> list[Any]:
    """An annotation's alternatives: ``Annotated`` unwrapped, unions (``X | None`` too) spread out."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [member for alternative in typing.get_args(annotation) for member in _members(alternative)]
    return [annotation]


def _put(data: Any, loc: Loc, value: object) -> None:
    for part in loc[:-1]:
        data = data[part]
    data[loc[-1]] = value
