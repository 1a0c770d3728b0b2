"""The errors of a filter spec, each with its place inside the spec."""

from __future__ import annotations

from dataclasses import dataclass

from ce_daemon.errors import CeDaemonError

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class FilterProblem:
    """One problem in a filter spec.

    ``loc`` is the path of the offending key or value inside the spec, e.g.
    ``("$and", 1, "severity", "$in")``; field keys appear as written (dots and all). ``at_key``
    says the fault is the last key itself (a misspelt operator, a bad field name) rather than
    the value under it, so a config loader can place the column on the key.
    """

    loc: Loc
    message: str
    at_key: bool = False

    def render(self) -> str:
        """``$and[1].severity.$in: message``."""
        return f"{render_loc(self.loc)}: {self.message}"


class FilterError(CeDaemonError, ValueError):
    """A filter spec is invalid; ``problems`` lists every problem found, not just the first.

    A ``ValueError`` so that a pydantic validator calling ``compile_filter`` reports it as a
    validation error of the field holding the filter.
    """

    def __init__(self, problems: list[FilterProblem]) -> None:
        self.problems = problems
        if len(problems) == 1:
            text = f"invalid filter: {problems[0].render()}"
        else:
            text = f"{len(problems)} problems in filter: " + "; ".join(p.render() for p in problems)
        super().__init__(text)


def render_loc(loc: Loc) -> str:
    """``("$and", 1, "severity")`` → ``$and[1].severity``; the empty loc is the whole filter."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return text or "(filter)"
