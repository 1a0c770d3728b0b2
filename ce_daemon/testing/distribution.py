"""A throwaway installed distribution, for tests of plugin discovery through real entry points.

:func:`write_distribution` writes modules and a ``.dist-info`` folder (``METADATA``,
``entry_points.txt``) into a folder; with that folder on ``sys.path`` (``monkeypatch.syspath_prepend``,
or ``PYTHONPATH`` for a child process) :mod:`importlib.metadata` finds the distribution as if pip had
installed it, and :meth:`ce_daemon.registry.Registry.discover` loads its plugins::

    write_distribution(tmp_path, "acme-ce", "1.0", {"acme_ce": source},
                       {"ce_daemon.log_sinks": {"acme": "acme_ce:AcmeSink"}})
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path


def write_distribution(
    folder: Path,
    name: str,
    version: str,
    modules: Mapping[str, str],
    entry_points: Mapping[str, Mapping[str, str]],
) -> Path:
    """Write distribution ``name`` ``version`` into ``folder``: ``modules`` (module name → source) and
    its ``entry_points`` (group → entry-point name → ``module:attribute``). Returns ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(source, encoding="utf-8")
    info = folder / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    sections = [
        f"[{group}]\n" + "".join(f"{entry} = {target}\n" for entry, target in targets.items())
        for group, targets in entry_points.items()
    ]
    (info / "entry_points.txt").write_text("\n".join(sections), encoding="utf-8")
    return folder
