"""The benchmarks' own instruments, held to what they claim to count.

``bench/`` is not a package (its scripts run as ``python bench/NAME.py``): the module is loaded from its
file, as the script would be.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.config.load import load_pipeline
from ce_daemon.registry import Registry

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


fanout = _bench("bench_fanout")


def _octet_stream(messages: list[bytes]) -> bytes:
    return b"".join(b"%d %s" % (len(message), message) for message in messages)


@given(
    messages=st.lists(st.binary(max_size=300), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=30),
)
def test_the_octet_counter_counts_every_message_however_the_stream_is_cut(
    messages: list[bytes], cuts: list[int]
) -> None:
    """Messages of any bytes (spaces and digits in them too), cut into chunks anywhere, lengths included."""
    stream = _octet_stream(messages)
    points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
    counter = fanout.OctetCounter()
    counted = [counter.feed(stream[start:end]) for start, end in itertools.pairwise(points)]
    assert sum(counted) == len(messages)
    assert counter.head == b"" and counter.skip == 0  # nothing left half-read at the stream's end


def test_each_message_is_counted_in_the_chunk_where_it_ends() -> None:
    stream = _octet_stream([b"a" * 10, b"b" * 5, b"c" * 3])  # "10 aaaaaaaaaa5 bbbbb3 ccc"
    counter = fanout.OctetCounter()
    assert counter.feed(stream[:1]) == 0  # half of the first length
    assert counter.feed(stream[1:8]) == 0  # inside the first message
    assert counter.feed(stream[8:15]) == 1  # the first ends here, the second starts
    assert counter.feed(stream[15:]) == 2


def _in_group(group: Path, pid: int) -> bool:
    with open(f"/proc/{pid}/cgroup", encoding="ascii") as groups:
        return any(line.rstrip("\n").endswith("/" + group.name) for line in groups)


@pytest.mark.skipif(
    os.geteuid() != 0 or fanout._cpu_group_root() is None, reason="needs root and a cpu cgroup"
)
def test_cpus_holds_the_run_in_a_cgroup_with_the_quota_asked_and_leaves_none_behind() -> None:
    """``bench_fanout --cpus 1.5``: a process moved into the group (and so all it starts) runs under a CFS
    quota of 1.5 periods per period; on the way out it is back in its parent group and the new one is gone.

    The process moved is a child of the test's own, as the daemon is of the benchmark's
    (``--cpus-of daemon``): the test process itself is never held."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with fanout.cpu_quota(1.5) as group:
            assert not _in_group(group, child.pid)
            fanout.hold(group, child.pid)
            assert _in_group(group, child.pid)
            assert not _in_group(group, os.getpid())
            if (group / "cpu.cfs_quota_us").exists():
                quota = (group / "cpu.cfs_quota_us").read_text("ascii").split()
                period = (group / "cpu.cfs_period_us").read_text("ascii").split()
                assert (int(quota[0]), int(period[0])) == (150_000, 100_000)
            else:
                assert (group / "cpu.max").read_text("ascii").split() == ["150000", "100000"]
        assert child.poll() is None  # still running, moved back out
        assert not _in_group(group, child.pid)
        assert not group.exists()
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    "names",
    [fanout.ROUTES, ["json-http"], ["cef-syslog", "leef-syslog", "cef-twin"]],
    ids=["three", "one", "with the twin"],
)
def test_the_fan_out_pipeline_is_one_the_daemon_runs(tmp_path: Path, names: list[str]) -> None:
    """The pipeline file ``bench_fanout`` hands ``ce-daemon run`` loads, with the routes asked for."""
    ports = {"cef": 6514, "http": 8080, "leef": 6515, "twin": 6516}
    made = fanout.pipeline(tmp_path, "http://127.0.0.1:4444", ports, "auto", names)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(made), encoding="utf-8")
    loaded = load_pipeline(path, Registry.discover(), environ={fanout.TOKEN_ENV: "a-token"})
    assert [route.name for route in loaded.config.logs.routes] == names  # type: ignore[attr-defined]
