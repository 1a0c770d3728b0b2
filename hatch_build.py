"""Build hook: compiles ``ce_daemon/logs/_native.c``, the C writer of CEF and LEEF extensions.

The C writer is an accelerator, not a requirement (:mod:`ce_daemon.logs.native`): without a C compiler,
or with ``CE_DAEMON_NATIVE=0`` in the environment, the package installs all the same and the generated
Python writers run instead (the same bytes, more CPU). It is compiled with the interpreter's own
compiler and include directory (``sysconfig``), so nothing but a C compiler is needed; an editable
install puts the module beside its source, a wheel carries it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("ce_daemon", "logs", "_native.c")


class NativeWriterHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if os.environ.get("CE_DAEMON_NATIVE", "1") == "0":
            self.app.display_info("ce-daemon: CE_DAEMON_NATIVE=0, the C writer is not built")
            return
        name = "_native" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
        source = Path(self.root, SOURCE)
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
            self.app.display_warning(
                f"ce-daemon: the C writer was not built ({detail}); CEF and LEEF use the Python writers"
            )
            return
        if version != "editable":
            build_data["force_include"][str(target)] = f"ce_daemon/logs/{name}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
