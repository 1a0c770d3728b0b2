"""Where a pipeline file puts its control socket and state database, read without the others' secrets.

For commands that must work when the file does not load any more (``status`` after a rejected
reload, ``dlq list``): only the ``state:`` and ``control:`` sections need to be valid, and only the
state's own secret references (``state.password``) need to resolve.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ce_daemon.config.load import section_settings
from ce_daemon.config.model import ControlSettings, Pipeline, StateSettings, anchor_paths
from ce_daemon.config.node import Node
from ce_daemon.config.source import read_source
from ce_daemon.control import control_socket_path
from ce_daemon.errors import ConfigError, Problem


def locate_state(path: Path, node: Node | None = None) -> tuple[Path, StateSettings] | None:
    """The control socket and state database a pipeline file names; only the state's secrets must resolve.

    A file that does not read any more (the very case `status` must explain after a rejected reload)
    is read for its top-level `state:` and `control:` sections alone, within the same bounds. The
    `state:` section is read with its references resolved (a PostgreSQL ``state.password``), every
    other secret left alone. What stands in the way is printed on stderr, each problem at its place;
    then None. ``node`` is the node asked about (``--data-dir``: its socket is in its own directory).
    """
    source = read_source(path, secrets=False)
    if not isinstance(source.data, dict):
        source = read_source(path, secrets=False, sections=("state", "control"))
    state_source = read_source(path, sections=("state",))
    unreadable = [s for s in (source, state_source) if not isinstance(s.data, dict)]
    if unreadable:
        print("\n".join(p.render() for p in unreadable[0].problems), file=sys.stderr)
        return None
    problems: list[Problem] = [item.problem for item in state_source.unresolved.values()]
    try:
        state = section_settings(state_source, StateSettings, "state")
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        control = section_settings(source, ControlSettings, "control")
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        print(ConfigError(problems).render(), file=sys.stderr)
        return None
    config = anchor_paths(Pipeline.model_construct(state=state, control=control), path.parent.absolute())
    if node is not None:
        config = node.apply(config)
    return control_socket_path(config), config.state
