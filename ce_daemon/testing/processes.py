"""Other processes as Linux shows them in /proc: a process's children and its state (tests, benchmarks)."""

from __future__ import annotations

from pathlib import Path


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a daemon's format workers, say)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text(encoding="ascii")
            except OSError:  # it ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def state_of(pid: int) -> str | None:
    """Process ``pid``'s state letter (``Z``: it ended, its parent has not reaped it yet), or None when
    there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between it and the read
        return None
