"""Build hook: compiles the C extensions: two on the JSON scanner of ``ce_daemon/_jsonscan.h``,
``ce_daemon/logs/_native.c`` (the C writer of CEF and LEEF lines) and ``ce_daemon/netskope/_pages.c``
(ingestion's page splitter), and ``ce_daemon/_framing.c`` (syslog frames of a whole batch).

All are accelerators, not requirements (:mod:`ce_daemon.logs.native`, :mod:`ce_daemon.netskope.rawpages`,
:mod:`ce_daemon.framing`):
without a C compiler, or with ``CE_DAEMON_NATIVE=0`` in the environment, the package installs all the
same and Python runs instead (the same bytes, more CPU). They are compiled with the interpreter's own
compiler and include directory (``sysconfig``), so nothing but a C compiler is needed; an editable
install puts each module beside its source, a wheel carries them.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = (
    Path("ce_daemon", "logs", "_native.c"),
    Path("ce_daemon", "netskope", "_pages.c"),
    Path("ce_daemon", "_framing.c"),
)


class NativeHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if os.environ.get("CE_DAEMON_NATIVE", "1") == "0":
            self.app.display_info("ce-daemon: CE_DAEMON_NATIVE=0, the C extensions are not built")
            return
        built = [self._compile(source, version, build_data) for source in SOURCES]
        if not any(built):
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def _compile(self, relative: Path, version: str, build_data: dict[str, Any]) -> bool:
        """Compile one extension; whether it was built (a failure is reported, not raised)."""
        name = relative.stem + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
        source = Path(self.root, relative)
        if version == "editable":
            target = source.with_name(name)
        else:
            target = Path(self.directory, "native", name)
            target.parent.mkdir(parents=True, exist_ok=True)
        compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
        command = [
            *shlex.split(compiler),
            "-O3",
            "-fPIC",
            "-shared",
            "-Wall",
            "-I",
            sysconfig.get_paths()["include"],
            str(source),
            "-o",
            str(target),
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)  # noqa: S603
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            self.app.display_warning(f"ce-daemon: {relative} was not built ({detail}); Python runs instead")
            return False
        if version != "editable":
            build_data["force_include"][str(target)] = str(relative.with_name(name))
        return True
