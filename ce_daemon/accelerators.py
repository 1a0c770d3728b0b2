"""Loading the C modules built at install time (``hatch_build.py``), or saying why one is not used.

Three modules are optional: ``ce_daemon.logs._native`` (the CEF/LEEF/JSON writer),
``ce_daemon.netskope._pages`` (the page splitter) and ``ce_daemon._framing`` (syslog framing of a
batch). Each has a pure-Python twin that gives the same bytes at more CPU. A module is used only when

* ``CE_DAEMON_NATIVE`` is not ``0`` in the process's environment (the benchmarks compare both ways);
* it was built (an install without a C compiler still succeeds);
* its ``ABI`` constant is the one the Python beside it was written for (a build of an older C file,
  left by an editable install that was not reinstalled, is refused).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["load", "turned_off"]


def turned_off() -> bool:
    """True when ``CE_DAEMON_NATIVE=0`` asks for the pure-Python paths."""
    return os.environ.get("CE_DAEMON_NATIVE", "1") == "0"


def load(name: str, abi: int) -> tuple[ModuleType | None, str]:
    """The built module ``name`` and ``"built"``, or None and why it is not used."""
    if turned_off():
        return None, "turned off (CE_DAEMON_NATIVE=0)"
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        return None, f"not built ({exc})"
    found = getattr(module, "ABI", None)
    if found != abi:
        return None, f"a stale build (ABI {found}, expected {abi}): reinstall the package"
    return module, "built"
