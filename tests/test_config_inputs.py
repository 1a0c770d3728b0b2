"""Any configuration input ends in exit 0 or 78 with positioned problems, in bounded time and memory.

One regression test per class of hostile input found by fuzzing `ce-daemon check`: alias bombs, deep
nesting (in a filter too), oversized files, unknown tags, merge keys, complex keys, huge integers,
scalars their tag cannot read, files that are not regular files, wrong shapes, and values that
cannot work at run time. Hostile files run in a child process under a memory limit and a timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydantic import model_validator

from ce_daemon.config.load import load_pipeline
from ce_daemon.filter import FilterError, compile_filter
from ce_daemon.logs.job import routes_of
from ce_daemon.plugin import LogSink, OutRecord, PluginOptions, SendResult
from ce_daemon.registry import PluginInfo, Registry
from ce_daemon.testing.configs import billion_laughs, config_problems, run_bounded
from ce_daemon.testing.configs import write_config as write

BASE = """\
version: 1
state: {path: ./state/db.sqlite}
tenants:
  - name: acme
    url: https://acme.goskope.com
    token: {$env: ACME_TOKEN}
logs:
  routes:
    - name: to-file
      tenant: acme
      alerts: [dlp]
      sink: {type: file, path: out/x.cef}
"""
ENV = {"ACME_TOKEN": "t0k3n"}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.discover()


def problems_of(path: Path, registry: Registry) -> list[str]:
    return config_problems(path, registry, ENV)


def hostile(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m ce_daemon ARGS`` in a child limited to 1 GiB of address space and 30 s."""
    return run_bounded(*args, env={**ENV, **(env or {})})


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    """The command exited 78 with ``message`` and no traceback."""
    assert result.returncode == 78, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# -- alias expansion ------------------------------------------------------------------------------


def test_alias_bomb_stops_at_the_value_limit(tmp_path: Path) -> None:
    """A "billion laughs" file (9^10 values) is refused at 100,000 values, under 1 GiB, with its place."""
    path = write(tmp_path, BASE + billion_laughs())
    result = hostile("check", "-c", str(path))
    refused(result, "values once aliases and merges are expanded")
    assert f"{path}:13:" in result.stderr or f"{path}:14:" in result.stderr


def test_alias_inside_its_own_anchor_is_refused(tmp_path: Path, registry: Registry) -> None:
    """An alias used inside the value its anchor names (an endless value) is a positioned problem."""
    found = problems_of(write(tmp_path, BASE + "extra: &loop [a, *loop]\n"), registry)
    assert any(":13:" in p and "nest deeper than 64 levels once aliases are expanded" in p for p in found), (
        found
    )


# -- nesting depth --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        ("x: " + "[" * 100 + "]" * 100 + "\n", ":13:67: lists and mappings nest deeper than 64 levels"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", ":13:1003: not valid YAML: exceeded maximum nesting depth"),
        (
            "x:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 100)),
            ":77:129: lists and mappings nest deeper",
        ),
    ],
    ids=["flow-100", "flow-5000", "block-100"],
)
def test_deep_nesting_is_a_positioned_problem(tmp_path: Path, tail: str, problem: str) -> None:
    """Lists and mappings nested past the limit are refused with a place, not a RecursionError."""
    path = write(tmp_path, BASE + tail)
    refused(hostile("check", "-c", str(path)), f"{path}{problem}")


def test_deep_filter_in_yaml_is_refused(tmp_path: Path, registry: Registry) -> None:
    """A filter nested 600 levels deep in YAML is refused at its place (the compiler never sees it)."""
    spec = "{a: " * 600 + "1" + "}" * 600
    path = write(
        tmp_path, BASE.replace("      alerts: [dlp]\n", f"      alerts: [dlp]\n      filter: {spec}\n")
    )
    found = problems_of(path, registry)
    assert any(":12:" in p and "nest deeper than 64 levels" in p for p in found), found


def test_deep_filter_given_as_json_text_is_refused(tmp_path: Path, registry: Registry) -> None:
    """A filter given as CE's JSON text, nested beyond the limit, is a problem of the filter."""
    spec = '{"$and": [' * 200 + "{}" + "]}" * 200
    with pytest.raises(FilterError, match="nests deeper than 64 levels"):
        compile_filter(spec)
    route = BASE.replace("      alerts: [dlp]\n", f"      alerts: [dlp]\n      filter: '{spec}'\n")
    found = problems_of(write(tmp_path, route), registry)
    assert any("logs.routes[0].filter: the filter nests deeper than 64 levels" in p for p in found), found


# -- file size ------------------------------------------------------------------------------------


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    """A pipeline file over 1 MiB is refused whole, with the limit named."""
    path = write(tmp_path, BASE + ("# padding\n" * 110_000))
    refused(hostile("check", "-c", str(path)), "is larger than 1 MiB")


def test_a_mebibyte_of_values_is_refused_quickly(tmp_path: Path) -> None:
    """A 1 MiB file of 500,000 list items stops at the value limit (the child has 30 s and 1 GiB)."""
    path = write(tmp_path, BASE + "x: [" + "0," * 500_000 + "0]\n")
    refused(hostile("check", "-c", str(path)), "the file holds more than 100,000 values")


# -- tags, keys, scalars --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object:os.system {}", "!!python/object:os.system"),
        ("!!python/name:os.system ''", "!!python/name:os.system"),
        ("!foo bar", "!foo"),
        ('!!binary "AAAA"', "!!binary"),
        ("!!set {a: null}", "!!set"),
        ("!!omap [a: 1]", "!!omap"),
    ],
)
def test_unknown_tags_are_positioned_problems(
    tmp_path: Path, registry: Registry, value: str, tag: str
) -> None:
    """A tag outside the core types is refused where it is written, whatever it would construct."""
    path = write(tmp_path, BASE.replace("path: ./state/db.sqlite", f"path: {value}"))
    found = problems_of(path, registry)
    assert any(f":2:15: state.path: unsupported YAML tag {tag}" in p for p in found), found


def test_complex_key_is_a_positioned_problem(tmp_path: Path, registry: Registry) -> None:
    """A list used as a mapping key (`? [a, b]`) is refused at the key."""
    found = problems_of(write(tmp_path, BASE + "? [a, b]\n: 1\n"), registry)
    assert any(":13:3: a key must be a plain name, not a list or a mapping" in p for p in found), found


@pytest.mark.parametrize("number", ["9" * 5000, str(2**63), str(-(2**63) - 1), "0x" + "f" * 40])
def test_huge_integers_are_positioned_problems(tmp_path: Path, registry: Registry, number: str) -> None:
    """Integers beyond 64 bits (thousands of digits too) are refused at their place, not deep inside."""
    path = write(
        tmp_path, BASE.replace("alerts: [dlp]", f"alerts: [dlp]\n      batch: {{max_records: {number}}}")
    )
    found = problems_of(path, registry)
    assert any("logs.routes[0].batch.max_records: integer out of range (64-bit signed)" in p for p in found)
    assert len(found) == 1, found


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("!!float x", "number"),
        ("!!int abc", "integer"),
        ("!!bool maybe", "boolean"),
        ("!!timestamp yesterday", "timestamp"),
        ("2024-13-01", "timestamp"),
        ("!!int ''", "integer"),
    ],
)
def test_scalars_their_tag_cannot_read_are_positioned(
    tmp_path: Path, registry: Registry, value: str, kind: str
) -> None:
    """`!!float x` and friends are one problem at the value, never a ValueError traceback."""
    path = write(tmp_path, BASE + f"shutdown_grace: {value}\n")
    assert problems_of(path, registry) == [f"{path}:13:17: shutdown_grace: not a valid {kind}"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('tenants: "a\\0b"\n', ":1:10: tenants: the text contains a NUL character"),
        ('tenants: "\\ud800"\n', ":1:13: not valid YAML: found invalid Unicode character escape code"),
        (
            "tenants: [a]\n---\ntenants: [b]\n",
            ":2:1: not valid YAML: a pipeline file holds one YAML document",
        ),
        ("tenants: *nowhere\n", ":1:10: not valid YAML: found undefined alias 'nowhere'"),
        (
            "tenants: [\x01]\n",
            ":1:11: not valid YAML: #x0001 is not allowed (control characters must be escaped)",
        ),
    ],
    ids=["nul", "surrogate", "two-documents", "undefined-alias", "control-character"],
)
def test_unusable_text_is_a_positioned_problem(
    tmp_path: Path, registry: Registry, text: str, problem: str
) -> None:
    """Text no component could use, or that is not one YAML document, is refused with its place."""
    found = problems_of(write(tmp_path, text), registry)
    assert any(p.startswith(f"{tmp_path / 'pipeline.yaml'}{problem}") for p in found), found


def test_file_that_is_not_utf8_is_refused_at_the_byte(tmp_path: Path, registry: Registry) -> None:
    """Bytes that are not UTF-8 are refused at their line and column."""
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(b"version: 1\ntenants: [\xff]\n")
    assert problems_of(path, registry) == [f"{path}:2:11: not UTF-8 text (byte 0xff)"]


# -- merge keys -----------------------------------------------------------------------------------

MERGED = (
    BASE
    + """\
    - name: second
      tenant: acme
      alerts: [malware]
      batch: {<<: *defaults, max_records: 20}
      sink: {type: file, path: out/y.cef}
"""
)


def test_merge_keys_share_defaults_and_written_keys_win(tmp_path: Path, registry: Registry) -> None:
    """`<<: *anchor` copies a mapping's keys; a key written beside it wins over the merged one."""
    text = MERGED.replace(
        "alerts: [dlp]", "alerts: [dlp]\n      batch: &defaults {max_records: 10, max_wait: 2s}"
    )
    loaded = load_pipeline(write(tmp_path, text), registry, environ=ENV)
    batch = routes_of(loaded)["second"].config.batch
    assert (batch.max_records, batch.max_wait) == (20, 2.0)


def test_merged_value_is_placed_where_its_anchor_writes_it(tmp_path: Path, registry: Registry) -> None:
    """A bad value taken from a merge is reported on the anchored mapping's line."""
    text = MERGED.replace(
        "alerts: [dlp]", "alerts: [dlp]\n      batch: &defaults {max_records: 10, max_wait: soon}"
    )
    found = problems_of(write(tmp_path, text), registry)
    assert any(":12:52: logs.routes[0].batch.max_wait" in p for p in found), found
    assert any(":12:52: logs.routes[1].batch.max_wait" in p for p in found), found


def test_merge_of_anything_but_mappings_is_refused(tmp_path: Path, registry: Registry) -> None:
    """`<<: 5` is a positioned problem, not a crash or a silent key."""
    found = problems_of(write(tmp_path, BASE + "logging: {<<: 5}\n"), registry)
    assert any(":13:15: logging: `<<` merges a mapping or a list of mappings" in p for p in found), found


# -- files that are not regular files -------------------------------------------------------------


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "socket"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        yield path


def special_file(tmp_path: Path, kind: str, name: str) -> Path:
    """A FIFO, a symlink to /dev/zero, or a directory at ``tmp_path/name``."""
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    return path


_KINDS = {"fifo": "is a FIFO (named pipe)", "zero": "is a character device", "directory": "is a directory"}


@pytest.mark.parametrize("kind", _KINDS)
def test_pipeline_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    """`check` on a FIFO, /dev/zero or a directory returns 78 at once, never hanging or filling memory."""
    path = special_file(tmp_path, kind, "pipeline.yaml")
    refused(hostile("check", "-c", str(path)), f"the pipeline file {_KINDS[kind]}, not a regular file")


def test_pipeline_that_is_a_socket_is_refused(unix_socket: Path) -> None:
    """`check` on a unix socket returns 78 with what it is."""
    refused(hostile("check", "-c", str(unix_socket)), "the pipeline file is a socket, not a regular file")


@pytest.mark.parametrize("kind", _KINDS)
def test_secret_file_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    """A `$file` secret that is a FIFO, /dev/zero or a directory is a problem at the reference."""
    special_file(tmp_path, kind, "token")
    path = write(tmp_path, BASE.replace("{$env: ACME_TOKEN}", "{$file: token}"))
    result = hostile("check", "-c", str(path))
    refused(
        result, f"{path}:6:12: tenants[0].token: cannot read secret file {tmp_path / 'token'}: {_KINDS[kind]}"
    )


def test_credential_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    """A `$credential` that is a FIFO in $CREDENTIALS_DIRECTORY does not block `check`."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    special_file(credentials, "fifo", "netskope-token")
    path = write(tmp_path, BASE.replace("{$env: ACME_TOKEN}", "{$credential: netskope-token}"))
    result = hostile("check", "-c", str(path), env={"CREDENTIALS_DIRECTORY": str(credentials)})
    refused(result, "is a FIFO (named pipe), not a regular file")


def test_mapping_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    """A route's mapping file that is a FIFO is a problem at `mapping`, not a hang."""
    special_file(tmp_path, "fifo", "ce.json")
    path = write(tmp_path, BASE.replace("alerts: [dlp]", "alerts: [dlp]\n      mapping: ./ce.json"))
    mapping = tmp_path / "ce.json"
    result = hostile("check", "-c", str(path))
    refused(result, f"logs.routes[0].mapping: {mapping}: cannot read mapping file")
    refused(result, "is a FIFO (named pipe), not a regular file")


def test_mapping_file_nested_too_deeply_is_refused(tmp_path: Path, registry: Registry) -> None:
    """A mapping file nested 100,000 levels deep is a problem, not a RecursionError."""
    (tmp_path / "ce.json").write_text('{"jsonData": ' + "[" * 100_000 + "]" * 100_000 + "}")
    path = write(tmp_path, BASE.replace("alerts: [dlp]", "alerts: [dlp]\n      mapping: ./ce.json"))
    assert any("nested too deeply to be a mapping file" in p for p in problems_of(path, registry))


# -- wrong shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        BASE.replace("alerts: [dlp]", "alerts: [dlp]\n      mute: 5"),
        BASE.replace("alerts: [dlp]", "alerts: [dlp]\n      mute: [5, {start: x}]"),
        BASE.replace("alerts: [dlp]", "alerts: [dlp]\n      filter: 5"),
        BASE.replace("alerts: [dlp]", "alerts: 5"),
        BASE.replace("alerts: [dlp]", "alerts: [dlp]\n      events: {a: 1}"),
        BASE.replace("sink: {type: file, path: out/x.cef}", "sink: 5"),
        BASE.replace("sink: {type: file, path: out/x.cef}", "sink: {type: [file]}"),
        BASE.replace("alerts: [dlp]", "alerts: [dlp]\n      fields: 5\n      format: json"),
        BASE.replace("alerts: [dlp]", "alerts: [dlp]\n      mapping: [x]"),
        BASE.replace("alerts: [dlp]", "alerts: [dlp]\n      batch: []"),
        BASE.replace("  routes:\n", "  routes: {a: 1}\n  x:\n"),
        "tenants: 5\nlogs: [1]\nstate: 5\n",
        "tenants: [5, {name: [x]}]\n",
        BASE + '"a[0]": 1\nstr: 2\n',
        BASE.replace("token: {$env: ACME_TOKEN}", "token: {$env: [A]}"),
        BASE.replace("token: {$env: ACME_TOKEN}", "token: {$env: ACME_TOKEN, more: 1}"),
        "{$env: ACME_TOKEN}\n",
        BASE + "threats: 5\n",
        BASE + "threats: {sources: [5, {name: x, netskope: 5}, {name: y, plugin: 5}]}\n",
        BASE + "threats: {destinations: [{name: d, echo_of: [1], plugin: {type: 5}}]}\n",
        BASE + "threats: {sharing: [{name: r, to: 5, sources: 5, types: 5, filter: 5, cap: []}]}\n",
        "tenants: 5\nthreats: {sources: [{name: a, netskope: {tenant: x}}]}\n",
    ],
)
def test_wrong_shapes_anywhere_are_positioned_problems(tmp_path: Path, registry: Registry, text: str) -> None:
    """A value of the wrong shape anywhere is a problem with a line and column, never a TypeError."""
    found = problems_of(write(tmp_path, text), registry)
    assert found
    assert all(p.startswith(f"{tmp_path / 'pipeline.yaml'}:") for p in found), found
    assert any(p.split(":")[1].isdigit() for p in found), found


class _CrashingOptions(PluginOptions):
    @model_validator(mode="before")
    @classmethod
    def _crash(cls, data: object) -> object:
        raise TypeError(f"unhashable: {data!r}")


class _CrashingSink(LogSink):
    """A third-party sink whose options validator has a bug."""

    Options = _CrashingOptions

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        return SendResult()


def test_plugin_validator_that_crashes_is_a_problem(tmp_path: Path) -> None:
    """A plugin's validator raising something else than a validation error is reported, not raised."""
    crashing = PluginInfo(
        "log_sink", "crashing", "x:CrashingSink", "crashing-dist", "1.0", _CrashingSink, None
    )
    path = write(tmp_path, BASE.replace("sink: {type: file, path: out/x.cef}", "sink: {type: crashing}"))
    found = problems_of(path, Registry([crashing]))
    assert len(found) == 1
    assert f"{path}:12:13: logs.routes[0].sink: the 'crashing' plugin failed to validate" in found[0]
    assert "(TypeError)\n    Hint: a bug of crashing-dist 1.0" in found[0]


def test_syslog_protocol_of_the_wrong_shape_is_a_problem(tmp_path: Path, registry: Registry) -> None:
    """`protocol: {a: 1}` in a syslog sink is a positioned problem (it raised TypeError in a validator)."""
    sink = "sink: {type: syslog, host: siem.example.net, protocol: {a: 1}}"
    found = problems_of(write(tmp_path, BASE.replace("sink: {type: file, path: out/x.cef}", sink)), registry)
    assert any(
        ":12:62: logs.routes[0].sink.protocol: Input should be 'udp', 'tcp' or 'tls'" in p for p in found
    )


# -- values that cannot work at run time ----------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("    token:", "    timeout: .inf\n    token:", "tenants[0].timeout"),
        ("    token:", "    timeout: 0\n    token:", "tenants[0].timeout"),
        ("    token:", "    start: .nan\n    token:", "tenants[0].start"),
        ("    token:", "    lookback: {start: 99999999999d}\n    token:", "tenants[0].lookback.start"),
        ("    token:", "    max_retry_delay: 0\n    token:", "tenants[0].max_retry_delay"),
        ("    token:", "    rate_limit: .nan\n    token:", "tenants[0].rate_limit"),
        ("version: 1", "version: 1\nhealth: {interval: 0}", "health.interval"),
        ("version: 1", "version: 1\nhealth: {interval: .inf}", "health.interval"),
        ("version: 1", "version: 1\nshutdown_grace: -1", "shutdown_grace"),
        ("version: 1", "version: 1\nspool: {max_bytes: 99999999999999999999GiB}", "spool.max_bytes"),
        ("alerts: [dlp]", "alerts: [dlp]\n      retry_max_delay: 0", "logs.routes[0].retry_max_delay"),
        ("alerts: [dlp]", "alerts: [dlp]\n      batch: {max_wait: .inf}", "logs.routes[0].batch.max_wait"),
        (
            "alerts: [dlp]",
            "alerts: [dlp]\n      mute: [{start: 2026-12-26T00:00:00Z, end: 2026-12-24T00:00:00Z}]",
            "logs.routes[0].mute[0]",
        ),
    ],
)
def test_values_that_cannot_work_at_run_time_are_refused(
    tmp_path: Path, registry: Registry, old: str, new: str, where: str
) -> None:
    """Non-finite, non-positive or absurd durations, sizes and times are refused by `check`."""
    found = problems_of(write(tmp_path, BASE.replace(old, new, 1)), registry)
    assert any(f": {where}:" in p for p in found), found


@pytest.mark.parametrize(
    ("option", "value"),
    [("timeout", ".inf"), ("timeout", "0"), ("timeout", "1d"), ("max_request_bytes", "99999999999")],
)
def test_plugin_options_get_the_same_bounds(
    tmp_path: Path, registry: Registry, option: str, value: str
) -> None:
    """A sink's timeout must be finite, positive and at most an hour, as the core's are; sizes are capped."""
    sink = (
        f"sink:\n        type: webhook\n        url: https://hooks.example.net/x\n        {option}: {value}"
    )
    path = write(tmp_path, BASE.replace("sink: {type: file, path: out/x.cef}", sink))
    found = problems_of(path, registry)
    assert any("logs.routes[0].sink." in p for p in found), found


# -- the daemon itself ----------------------------------------------------------------------------


def test_run_logs_the_problems_and_exits_78(tmp_path: Path) -> None:
    """`ce-daemon run` on a hostile file logs the problem and exits 78 (no restart loop, no traceback)."""
    path = write(tmp_path, BASE + billion_laughs())
    result = hostile("run", "-c", str(path))
    assert result.returncode == 78, result.stdout + result.stderr
    assert "daemon.config_invalid" in result.stdout + result.stderr
    assert "values once aliases and merges are expanded" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# -- the tenant's address and CA bundle: what the client could not use is refused by check ----------


def tenant_with(tmp_path: Path, line: str, url: str = "https://acme.goskope.com") -> Path:
    text = BASE.replace("    url: https://acme.goskope.com\n", f"    url: {url}\n    {line}\n")
    return write(tmp_path, text)


@pytest.mark.parametrize(
    ("ca_file", "problem"),
    [
        ("missing.pem", "missing.pem: no such file or directory"),
        (".", "is a directory, not a regular file"),
        ("pipeline.yaml", "holds no usable PEM certificate"),
    ],
)
def test_tenant_ca_file_the_client_cannot_load_is_refused(
    tmp_path: Path, registry: Registry, ca_file: str, problem: str
) -> None:
    problems = problems_of(tenant_with(tmp_path, f"ca_file: {ca_file}"), registry)
    assert len(problems) == 1
    assert f"{tmp_path}/pipeline.yaml:6:14: tenants[0].ca_file:" in problems[0]
    assert problem in problems[0]


def test_tenant_ca_file_is_read_relative_to_the_pipeline(tmp_path: Path, registry: Registry) -> None:
    from ce_daemon.testing.tls import make_certificates

    files = make_certificates(tmp_path / "tls")
    path = tenant_with(tmp_path, f"ca_file: tls/{files.ca_file.name}")
    loaded = load_pipeline(path, registry, environ=ENV)
    assert loaded.config.tenants[0].ca_file == (tmp_path / "tls" / files.ca_file.name).absolute()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://acme.goskope.com", "would send the API token unencrypted"),
        ("https://acme.goskope.com:70000", "has a port outside 1-65535"),
    ],
)
def test_tenant_url_the_client_must_not_use_is_refused(
    tmp_path: Path, registry: Registry, url: str, problem: str
) -> None:
    problems = problems_of(tenant_with(tmp_path, "verify_tls: true", url=url), registry)
    assert len(problems) == 1
    assert f"{tmp_path}/pipeline.yaml:5:10: tenants[0].url:" in problems[0]
    assert problem in problems[0]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"])
def test_plain_http_to_loopback_is_allowed_for_the_simulator(
    tmp_path: Path, registry: Registry, url: str
) -> None:
    assert problems_of(tenant_with(tmp_path, "verify_tls: true", url=url), registry) == []
