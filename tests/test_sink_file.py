"""The `file` log sink: lines or NDJSON, rotation by size, and a clean start after a cut-short write."""

from __future__ import annotations

from pathlib import Path

import orjson
from ce_file import FileSink, FileSinkOptions

from ce_daemon.plugin import OutRecord, PluginContext


def records(n: int, start: int = 0) -> list[OutRecord]:
    return [
        OutRecord(f"id{i}", 1_700_000_000 + i, f"CEF:0|line {i}".encode(), "alerts", "dlp", "cef")
        for i in range(start, start + n)
    ]


async def open_sink(tmp_path: Path, **options: object) -> FileSink:
    sink = FileSink(
        FileSinkOptions.model_validate({"path": "out/x.log", **options}),
        PluginContext(name="t", base_dir=tmp_path, data_dir=tmp_path),
    )
    await sink.open()
    return sink


async def test_lines_are_appended_and_relative_paths_resolve_beside_the_pipeline(tmp_path: Path) -> None:
    """Each record is one line, in order, in a file relative to the pipeline's folder."""
    sink = await open_sink(tmp_path)
    await sink.send(records(3))
    await sink.send(records(2, start=3))
    await sink.close()
    lines = (tmp_path / "out" / "x.log").read_text().splitlines()
    assert lines == [f"CEF:0|line {i}" for i in range(5)]


async def test_ndjson_mode_wraps_each_line(tmp_path: Path) -> None:
    """ndjson mode writes an object per record with its id, stream and formatted line."""
    sink = await open_sink(tmp_path, mode="ndjson")
    await sink.send(records(1))
    await sink.close()
    row = orjson.loads((tmp_path / "out" / "x.log").read_bytes())
    assert row == {
        "id": "id0",
        "kind": "alerts",
        "subtype": "dlp",
        "format": "cef",
        "message": "CEF:0|line 0",
    }


async def test_rotation_keeps_the_configured_number_of_files(tmp_path: Path) -> None:
    """Past rotate_bytes the file is rotated to .1, .2 …, keeping at most `keep` old files, no line split."""
    sink = await open_sink(tmp_path, rotate_bytes="20B", keep=2)
    for i in range(6):
        await sink.send(records(1, start=i))
    await sink.close()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["x.log", "x.log.1", "x.log.2"]
    kept = [
        line for name in ("x.log.2", "x.log.1", "x.log") for line in (out / name).read_text().splitlines()
    ]
    assert kept == [f"CEF:0|line {i}" for i in range(3, 6)]  # one 13-byte line per file; older ones dropped


async def test_partial_last_line_is_ended_on_open(tmp_path: Path) -> None:
    """A line cut short by a crash is terminated before the next record is appended."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.log").write_bytes(b"CEF:0|whole\nCEF:0|cut sh")
    sink = await open_sink(tmp_path)
    await sink.send(records(1))
    await sink.close()
    assert (tmp_path / "out" / "x.log").read_text().splitlines() == [
        "CEF:0|whole",
        "CEF:0|cut sh",
        "CEF:0|line 0",
    ]
