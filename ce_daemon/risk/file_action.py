"""``risk_file``: a risk action that keeps a JSON file of the entities the rules flag now (a watchlist
another tool reads), one entry per (rule, type, key). Applying adds the entry, reverting removes it;
both are idempotent (the file is a set, rewritten atomically; the evaluator calls one at a time)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

from ce_daemon.plugin import PluginOptions, RiskAction, RiskTarget


class FileActionOptions(PluginOptions):
    """Where the watchlist is kept (relative paths from the pipeline file's folder)."""

    path: Path


class RiskFileAction(RiskAction[FileActionOptions]):
    """Keeps ``path`` as ``{"<rule>|<type>|<key>": {entity, key, rule, score, band, at}}``."""

    api_version = 1
    entities = frozenset({"user", "device", "application"})
    revertible = True

    @property
    def path(self) -> Path:
        return self.context.resolve(self.options.path)

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(temporary, self.path)

    async def apply(self, target: RiskTarget) -> Mapping[str, str]:
        entry = f"{target.rule}|{target.entity}|{target.key}"
        data = self._read()
        data[entry] = {"entity": target.entity, "key": target.key, "rule": target.rule,
                       "score": target.score, "band": target.band, "at": time.time()}  # fmt: skip
        self._write(data)
        return {"entry": entry}

    async def revert(self, target: RiskTarget) -> None:
        entry = target.state.get("entry") or f"{target.rule}|{target.entity}|{target.key}"
        data = self._read()
        if data.pop(entry, None) is not None:
            self._write(data)
