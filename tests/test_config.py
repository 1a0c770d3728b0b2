"""The pipeline file: validation, error places and hints, secrets by reference, `ce-daemon check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ce_daemon.config.load import load_pipeline
from ce_daemon.config.model import SyslogSettings
from ce_daemon.errors import ConfigError
from ce_daemon.logs.job import routes_of, secrets_resolved
from ce_daemon.registry import Registry
from ce_daemon.store import open_url, state_url
from ce_daemon.store.postgres import display_url
from ce_daemon.syslog import HealthChannel
from ce_daemon.testing.configs import config_problems
from ce_daemon.testing.configs import write_config as write

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
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
      alerts: [dlp, Malware]
      events: [audit]
      filter: {severity: {$in: [high, critical]}}
      sink: {type: file, path: out/x.cef}
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.discover()


def problems_of(path: Path, registry: Registry, env: dict[str, str] | None = None) -> list[str]:
    return config_problems(path, registry, env or {})


def check(path: Path, env: dict[str, str] | None = None, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ce_daemon", "check", "-c", str(path), *more],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def test_valid_pipeline_resolves_streams_filter_and_sink(tmp_path: Path, registry: Registry) -> None:
    """A valid file loads with its subtypes normalised, its filter compiled and its sink options validated."""
    loaded = load_pipeline(write(tmp_path, GOOD), registry, environ={"ACME_TOKEN": "t0k3n"})
    route = routes_of(loaded)["to-file"]
    assert [s.key for s in route.streams] == ["acme/alerts/dlp", "acme/alerts/malware", "acme/events/audit"]
    assert route.predicate is not None
    assert route.predicate({"severity": "high"}) and not route.predicate({"severity": "low"})
    assert route.sink.name == "file"
    assert loaded.tenants["acme"].token.get_secret_value() == "t0k3n"


def test_example_config_passes_check() -> None:
    """`ce-daemon check` on config.example.yaml exits 0 as shipped, with no environment set up."""
    result = check(ROOT / "config.example.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_three_mistakes_are_all_reported_with_line_and_column(tmp_path: Path) -> None:
    """A file with three mistakes exits 78 and lists all three, each with file:line:col."""
    text = (
        GOOD.replace("    url:", "    ur1:")
        .replace("type: file", "type: fiel")
        .replace("events: [audit]", "events: [audt]")
    )
    path = write(tmp_path, text)
    result = check(path, {"ACME_TOKEN": "x"})
    assert result.returncode == 78
    err = result.stderr
    assert f"{path}:5:5: tenants[0].ur1: unknown key 'ur1'" in err
    assert "Hint: did you mean 'url'?" in err
    assert f"{path}:12:16: logs.routes[0].events[0]: unknown events subtype 'audt'" in err
    assert f"{path}:14:20: logs.routes[0].sink.type: unknown log sink type 'fiel'" in err
    assert "did you mean 'file'?" in err
    assert "3 problems" in err


def test_missing_required_key_names_the_key(tmp_path: Path, registry: Registry) -> None:
    """A missing required key is reported at its parent's place, naming the key."""
    path = write(tmp_path, GOOD.replace("    url: https://acme.goskope.com\n", ""))
    assert any(
        ":4:5: tenants[0].url: required key 'url' is missing" in p
        for p in problems_of(path, registry, {"ACME_TOKEN": "x"})
    )


def test_number_where_text_is_needed_hints_quotes(tmp_path: Path, registry: Registry) -> None:
    """YAML reading a value as a number gets a hint to quote it."""
    path = write(tmp_path, GOOD.replace("tenant: acme", "tenant: 1234"))
    found = problems_of(path, registry, {"ACME_TOKEN": "x"})
    assert any("logs.routes[0].tenant" in p and "put the value in quotes" in p for p in found)


def test_words_where_a_number_is_needed_hint_a_plain_number(tmp_path: Path, registry: Registry) -> None:
    """A rate written with units gets a hint to give a plain number."""
    path = write(tmp_path, GOOD.replace("    token:", "    rate_limit: 4 per second\n    token:"))
    found = problems_of(path, registry, {"ACME_TOKEN": "x"})
    assert any("tenants[0].rate_limit" in p and "plain number" in p for p in found)


def test_unknown_tenant_reference_suggests_the_nearest(tmp_path: Path, registry: Registry) -> None:
    """A route naming a tenant that does not exist is an error with the nearest name suggested."""
    path = write(tmp_path, GOOD.replace("tenant: acme", "tenant: acm"))
    assert any(
        "no tenant named 'acm'" in p and "did you mean 'acme'?" in p
        for p in problems_of(path, registry, {"ACME_TOKEN": "x"})
    )


def test_filter_errors_point_into_the_filter(tmp_path: Path, registry: Registry) -> None:
    """A bad operator in a filter is reported at its key in the YAML."""
    path = write(tmp_path, GOOD.replace("$in: [high, critical]", "$inn: [high, critical]"))
    found = problems_of(path, registry, {"ACME_TOKEN": "x"})
    assert any(":13:27: logs.routes[0].filter.severity.$inn: unknown operator '$inn'" in p for p in found), (
        found
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "file not found"),
        ("", "the file is empty"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("tenants: [\n", "not valid YAML"),
    ],
)
def test_unusable_files_are_clear_errors(tmp_path: Path, text: str | None, message: str) -> None:
    """A missing, empty, non-mapping or broken file is a clear error and exit 78, never a traceback."""
    path = tmp_path / "pipeline.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    result = check(path)
    assert result.returncode == 78
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_env_secret_missing_is_reported_without_value(tmp_path: Path, registry: Registry) -> None:
    """An unset $env secret is reported with its place and the variable name."""
    found = problems_of(write(tmp_path, GOOD), registry, {})
    assert any(":6:12: tenants[0].token: environment variable ACME_TOKEN is not set" in p for p in found)


def test_file_and_credential_secrets_resolve(tmp_path: Path, registry: Registry) -> None:
    """{$file: …} reads beside the pipeline; {$credential: …} reads $CREDENTIALS_DIRECTORY."""
    (tmp_path / "token.txt").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "netskope").write_text("from-credential")
    loaded = load_pipeline(
        write(tmp_path, GOOD.replace("{$env: ACME_TOKEN}", "{$file: token.txt}")), registry, environ={}
    )
    assert loaded.tenants["acme"].token.get_secret_value() == "from-file"
    text = GOOD.replace("{$env: ACME_TOKEN}", "{$credential: netskope}")
    loaded = load_pipeline(
        write(tmp_path, text, "p2.yaml"), registry, environ={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert loaded.tenants["acme"].token.get_secret_value() == "from-credential"


def test_check_never_prints_a_secret(tmp_path: Path) -> None:
    """Even when the file has errors, `check` output never contains a secret's value."""
    secret = "s3cr3t-VALUE-42"
    text = GOOD.replace("tenant: acme", "tenant: nope").replace(
        "    token:", "    rate_limit: fast\n    token:"
    )
    result = check(write(tmp_path, text), {"ACME_TOKEN": secret})
    assert result.returncode == 78
    assert secret not in result.stdout + result.stderr


def test_secret_in_a_wrongly_typed_field_is_not_echoed(tmp_path: Path, registry: Registry) -> None:
    """A secret reference put where a number belongs yields an error that does not echo it."""
    text = GOOD.replace("    token:", "    rate_limit: {$env: ACME_TOKEN}\n    token:")
    found = problems_of(write(tmp_path, text), registry, {"ACME_TOKEN": "abcd-secret"})
    assert found and not any("abcd-secret" in p for p in found)


def test_duplicate_names_are_refused(tmp_path: Path, registry: Registry) -> None:
    """Two routes with one name is an error (components are keyed by name)."""
    route = GOOD.split("  routes:\n", 1)[1]
    path = write(tmp_path, GOOD + route)
    assert any(
        "the name 'to-file' is used twice" in p for p in problems_of(path, registry, {"ACME_TOKEN": "x"})
    )


def test_durations_and_sizes_accept_units(tmp_path: Path, registry: Registry) -> None:
    """Durations and sizes are written naturally (30s, 5m, 64MiB)."""
    text = GOOD + "shutdown_grace: 2m\nspool: {max_bytes: 64MiB}\n"
    loaded = load_pipeline(write(tmp_path, text), registry, environ={"ACME_TOKEN": "x"})
    assert loaded.config.shutdown_grace == 120
    assert loaded.config.spool.max_bytes == 64 * 1024 * 1024


def test_relative_state_path_resolves_beside_the_pipeline(tmp_path: Path, registry: Registry) -> None:
    """A relative state path is taken from the pipeline file's folder, not the working directory."""
    loaded = load_pipeline(write(tmp_path, GOOD), registry, environ={"ACME_TOKEN": "x"})
    assert loaded.config.state.path == tmp_path / "state" / "db.sqlite"


def test_unresolved_secret_is_reported_once(tmp_path: Path, registry: Registry) -> None:
    """A missing secret yields one problem, not a second 'valid string' error at the same place."""
    found = problems_of(write(tmp_path, GOOD), registry, {})
    assert [p for p in found if "tenants[0].token" in p] == [
        next(p for p in found if "tenants[0].token" in p)
    ]


def test_json_fields_are_checked_and_only_for_json(tmp_path: Path, registry: Registry) -> None:
    """`fields` is refused on a CEF route, and a malformed entry is reported at the route's `fields`."""
    cef = GOOD.replace("      sink:", "      fields: [user]\n      sink:")
    assert any(
        "`fields` applies to `format: json` only" in p
        for p in problems_of(write(tmp_path, cef), registry, {"ACME_TOKEN": "x"})
    )
    bad = GOOD.replace("      sink:", "      format: json\n      fields: [user, 5]\n      sink:")
    found = problems_of(write(tmp_path, bad, "bad.yaml"), registry, {"ACME_TOKEN": "x"})
    assert any("logs.routes[0].fields" in p and "[1]" in p for p in found), found


# -- secrets: references only, resolvable or told apart ---------------------------------------------


@pytest.mark.parametrize(
    ("written", "message", "hint"),
    [
        ("s3cret-Inline-9", "a secret must not be written in the file", "refer to it: {$env: NAME}"),
        ("${NS_TOKEN}", "${…} is not expanded", "refer to the variable: {$env: NS_TOKEN}"),
        (
            '"{$env: NS_TOKEN}"',
            "this is text that looks like a $env reference",
            "remove the quotes: {$env: NS_TOKEN}",
        ),
        ("12345678", "expects a secret reference", "write {$env: NAME}"),
    ],
)
def test_inline_secret_is_refused_with_the_reference_form(
    tmp_path: Path, registry: Registry, written: str, message: str, hint: str
) -> None:
    """A token written in the file (plain, shell-style or a quoted reference) is refused with a hint."""
    path = write(tmp_path, GOOD.replace("{$env: ACME_TOKEN}", written))
    found = problems_of(path, registry, {"NS_TOKEN": "x"})
    assert len(found) == 1, found
    assert f"{path}:6:12: tenants[0].token: {message}" in found[0]
    assert f"Hint: {hint}" in found[0]
    assert "s3cret-Inline-9" not in found[0] and "12345678" not in found[0]


def test_inline_secret_in_a_plugin_option_is_found_by_its_type(tmp_path: Path, registry: Registry) -> None:
    """A sink's secret field (a webhook bearer token inside a union) is refused inline like a tenant's."""
    sink = "sink: {type: webhook, url: 'https://h.example/x', auth: {type: bearer, token: abc-Inline}}"
    path = write(tmp_path, GOOD.replace("sink: {type: file, path: out/x.cef}", sink))
    found = problems_of(path, registry, {"ACME_TOKEN": "x"})
    assert [p.split("\n")[0] for p in found] == [
        f"{path}:14:85: logs.routes[0].sink.auth.token: a secret must not be written in the file"
    ]
    assert "abc-Inline" not in found[0]


def test_a_credential_header_is_a_secret_other_headers_are_text(tmp_path: Path, registry: Registry) -> None:
    """`Authorization` written in a sink's headers is refused inline; by reference it is fine, and so is
    `Content-Type` written as text."""
    sink = (
        "sink: {type: webhook, url: 'https://h.example/x', headers: {Content-Type: text/plain, "
        "Authorization: Bearer abc-Inline-77, X-Api-Key: {$env: HOOK_KEY}}}"
    )
    path = write(tmp_path, GOOD.replace("sink: {type: file, path: out/x.cef}", sink))
    found = problems_of(path, registry, {"ACME_TOKEN": "x", "HOOK_KEY": "key-by-reference"})
    assert [p.split("\n")[0].split(": ", 1)[1] for p in found] == [
        "logs.routes[0].sink.headers.Authorization: a secret must not be written in the file"
    ]
    assert "abc-Inline-77" not in found[0]


def test_unresolvable_reference_is_told_apart_from_an_invalid_one(tmp_path: Path, registry: Registry) -> None:
    """`$credential` outside systemd "cannot be resolved in this environment"; a missing `$file` is wrong."""
    text = GOOD.replace("{$env: ACME_TOKEN}", "{$credential: netskope-token}").replace(
        "sink: {type: file, path: out/x.cef}",
        "sink: {type: splunk_hec, url: 'https://s.example:8088', token: {$file: missing-token}}",
    )
    found = problems_of(write(tmp_path, text), registry, {})
    assert any(
        "tenants[0].token: credential 'netskope-token' cannot be resolved in this environment" in p
        and "--allow-unresolved-secrets" in p
        for p in found
    ), found
    assert any(
        "logs.routes[0].sink.token: cannot read secret file" in p and "no such file or directory" in p
        for p in found
    ), found


def test_allow_unresolved_secrets_validates_the_rest_and_lists_them(tmp_path: Path) -> None:
    """`check --allow-unresolved-secrets` exits 0 when only unresolvable references remain, naming them."""
    path = write(tmp_path, GOOD.replace("{$env: ACME_TOKEN}", "{$credential: netskope-token}"))
    plain = check(path)
    assert plain.returncode == 78
    allowed = subprocess.run(
        [sys.executable, "-m", "ce_daemon", "check", "-c", str(path), "--allow-unresolved-secrets"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert f"{path}:6:12: tenants[0].token: not verified: credential 'netskope-token'" in allowed.stderr
    assert "1 secret reference(s) not verified in this environment" in allowed.stdout


def test_allow_unresolved_secrets_still_refuses_everything_else(tmp_path: Path, registry: Registry) -> None:
    """The flag skips only references another environment may resolve, not a missing file or a bad value."""
    text = GOOD.replace("{$env: ACME_TOKEN}", "{$file: missing-token}").replace("tenant: acme", "tenant: acm")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write(tmp_path, text), registry, environ={}, allow_unresolved_secrets=True)
    found = caught.value.render()
    assert "cannot read secret file" in found and "no tenant named 'acm'" in found


def test_disabled_route_needs_no_secret(tmp_path: Path, registry: Registry) -> None:
    """A disabled route's unresolvable secret is no problem, and the route is known to hold a stand-in."""
    route = (
        GOOD.split("  routes:\n", 1)[1]
        .replace("name: to-file", "name: later")
        .replace(
            "sink: {type: file, path: out/x.cef}",
            "enabled: false\n      sink: {type: splunk_hec, url: 'https://s', token: {$env: HEC_TOKEN}}",
        )
    )
    loaded = load_pipeline(write(tmp_path, GOOD + route), registry, environ={"ACME_TOKEN": "x"})
    assert not routes_of(loaded)["later"].config.enabled
    assert secrets_resolved(loaded, "to-file") and not secrets_resolved(loaded, "later")
    assert loaded.unverified_secrets == []


def test_empty_secret_is_refused(tmp_path: Path, registry: Registry) -> None:
    """An empty secret file or variable would only fail at run time with a 401: `check` refuses it."""
    (tmp_path / "token.txt").write_text("\n")
    found = problems_of(write(tmp_path, GOOD.replace("{$env: ACME_TOKEN}", "{$file: token.txt}")), registry)
    assert any("tenants[0].token: secret file" in p and "is empty" in p for p in found), found
    found = problems_of(write(tmp_path, GOOD, "p2.yaml"), registry, {"ACME_TOKEN": " "})
    assert any("tenants[0].token: environment variable ACME_TOKEN is empty" in p for p in found), found


def test_check_refuses_a_state_directory_others_may_write(tmp_path: Path, registry: Registry) -> None:
    """A state directory writable by other users (a shared one such as /tmp) is refused by `check`."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    path = write(tmp_path, GOOD.replace("./state/db.sqlite", f"{shared}/db.sqlite"))
    found = problems_of(path, registry, {"ACME_TOKEN": "x"})
    assert any(
        f":2:15: state.path: the state directory {shared} is writable by other users (mode 1777)" in p
        for p in found
    ), found


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("tenant: acme", "tenant: {$env: ACME_TOKEN}"),
        ("type: file", "type: {$env: ACME_TOKEN}"),
        ("alerts: [dlp, Malware]", "alerts: [{$env: ACME_TOKEN}]"),
        ("- name: to-file", "- name: {$env: ACME_TOKEN}"),
        ("path: out/x.cef", "path: {$env: ACME_TOKEN}"),
    ],
)
def test_secret_reference_where_no_secret_goes_is_refused_unseen(
    tmp_path: Path, registry: Registry, old: str, new: str
) -> None:
    """A reference put in a name, a type, a subtype or a sink option is refused, its value never quoted."""
    found = problems_of(write(tmp_path, GOOD.replace(old, new)), registry, {"ACME_TOKEN": "Secret-Value-77"})
    assert any("a secret reference where no secret is expected" in p for p in found), found
    assert not any("Secret-Value-77" in p for p in found), found


# -- health and control: what the daemon could not use at run time is refused here ---------------------


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("http://x", "is neither a socket path nor a udp:// or tcp:// address"),
        ("udp://x:99999", "needs a port from 1 to 65535 after the host"),
        ("udp://x", "needs a port from 1 to 65535 after the host"),
        ("tcp://x:0", "needs a port from 1 to 65535 after the host"),
        ("udp://[::1", "needs the collector's host name or address"),
        ("udp://[::g]:514", "'::g' is not an IPv6 address"),
        ("tcp://:514", "needs the collector's host name or address"),
        ("udp://x:514/path", "needs a port from 1 to 65535 after the host"),
        ("unix:run/x.sock", "a socket is named by its absolute path"),
        ("/" + "s" * 107, "a unix socket path is at most 107 bytes long, this one has 108"),
    ],
)
def test_a_syslog_target_the_channel_cannot_use_is_a_placed_problem(
    tmp_path: Path, registry: Registry, target: str, problem: str
) -> None:
    """`check` refuses a syslog target no health channel could open, at its place, hinting the forms."""
    text = GOOD.replace("version: 1\n", f'version: 1\nhealth: {{syslog: {{target: "{target}"}}}}\n')
    found = problems_of(write(tmp_path, text), registry, {"ACME_TOKEN": "x"})
    assert len(found) == 1, found
    assert f":2:27: health.syslog.target: syslog target {target!r}" in found[0] and problem in found[0]
    assert found[0].endswith(
        "Hint: a syslog target is /dev/log, unix:/path/to/socket, udp://host:514 or tcp://host:514 "
        "(an IPv6 address in brackets: udp://[::1]:514)"
    )


@given(
    st.builds(
        "{}{}{}{}".format,
        st.sampled_from(["", "/", "unix:", "unix:/", "udp://", "tcp://", "http://", "udp:/"]),
        st.text(alphabet="ab.-:[]/1 ", max_size=12),
        st.sampled_from(["", ":", ":514", ":0", ":65536", "]:514"]),
        st.text(alphabet="0123456789/?#", max_size=3),
    )
)
def test_check_and_the_health_channel_read_a_target_alike(target: str) -> None:
    """Any text: `check` accepts it as a syslog target exactly when a health channel opens on it."""
    try:
        SyslogSettings(target=target)
    except ValidationError:
        accepted = False
    else:
        accepted = True
    try:
        HealthChannel(target).close()
    except ValueError:
        opened = False
    else:
        opened = True
    assert accepted == opened, target


@pytest.mark.parametrize(
    ("interval", "refused"), [("500ms", True), ("0.9", True), ("1s", False), ("1d", False)]
)
def test_the_heartbeat_interval_is_at_least_a_second(
    tmp_path: Path, registry: Registry, interval: str, refused: bool
) -> None:
    """Each heartbeat saves a status snapshot (a query over the spool): `health.interval` is 1 s to 1 d."""
    text = GOOD.replace("version: 1\n", f"version: 1\nhealth: {{interval: {interval}}}\n")
    found = problems_of(write(tmp_path, text), registry, {"ACME_TOKEN": "x"})
    if refused:
        assert found == [
            f"{tmp_path / 'pipeline.yaml'}:2:20: health.interval: Input should be greater than or equal to 1"
        ]
    else:
        assert found == []


@pytest.mark.parametrize(
    ("socket", "problem"),
    [
        ("/proc/x.sock", "/proc/x.sock would lie in /proc, which cannot hold sockets"),
        ("/sys/fs/x.sock", "/sys/fs/x.sock would lie in /sys, which cannot hold sockets"),
        ("{tmp}/afile/x.sock", "{tmp}/afile is not a directory"),
        ("{tmp}/afile/deeper/x.sock", "{tmp}/afile is not a directory"),
        ("{tmp}/afile", "{tmp}/afile exists and is not a socket"),
        ("{tmp}/" + "d" * 100 + "/x.sock", "a unix socket path is at most 107 bytes long"),
    ],
)
def test_a_control_socket_no_daemon_could_listen_on_is_a_placed_problem(
    tmp_path: Path, registry: Registry, socket: str, problem: str
) -> None:
    """`check` refuses a control socket path where no socket can be, at its place, with a hint."""
    (tmp_path / "afile").write_text("not a socket\n")
    socket, problem = socket.format(tmp=tmp_path), problem.format(tmp=tmp_path)
    text = GOOD.replace("version: 1\n", f"version: 1\ncontrol: {{socket: {socket}}}\n")
    found = problems_of(write(tmp_path, text), registry, {"ACME_TOKEN": "x"})
    assert len(found) == 1, found
    assert f":2:19: control.socket: {problem}" in found[0]
    assert "Hint: leave `control.socket` unset (control.sock beside the state database)" in found[0]
    assert (tmp_path / "afile").read_text() == "not a socket\n"


def test_a_control_socket_in_a_directory_yet_to_be_made_passes(tmp_path: Path, registry: Registry) -> None:
    """A socket whose directory does not exist yet is fine: the daemon creates the directory."""
    text = GOOD.replace("version: 1\n", f"version: 1\ncontrol: {{socket: {tmp_path}/run/new/control.sock}}\n")
    assert problems_of(write(tmp_path, text), registry, {"ACME_TOKEN": "x"}) == []


# -- the state backend --------------------------------------------------------------------------------


def test_state_url_selects_postgresql_with_the_password_from_a_reference(
    tmp_path: Path, postgres_url: str
) -> None:
    """`state.url` with `password: {$env: …}`: the URL used carries the password; check connects."""
    text = GOOD.replace(
        "state: {path: ./state/db.sqlite}", f"state: {{url: {postgres_url}, password: {{$env: PGPW}}}}"
    )
    loaded = load_pipeline(
        write(tmp_path, text), Registry.discover(), environ={"ACME_TOKEN": "t", "PGPW": "pw/:@"}
    )
    assert loaded.config.state.url == postgres_url
    assert state_url(loaded.config.state).startswith("postgresql://postgres:pw%2F%3A%40@127.0.0.1:5432/")
    text = GOOD.replace("state: {path: ./state/db.sqlite}", f"state: {{url: {postgres_url}}}")
    result = check(write(tmp_path, text), {"ACME_TOKEN": "t"})
    assert result.returncode == 0, result.stderr


def test_sqlite_url_is_the_same_as_a_path(tmp_path: Path, registry: Registry) -> None:
    """`state.url: sqlite:///path` names the SQLite file at that path."""
    text = GOOD.replace("state: {path: ./state/db.sqlite}", f"state: {{url: 'sqlite://{tmp_path}/s.db'}}")
    loaded = load_pipeline(write(tmp_path, text), registry, environ={"ACME_TOKEN": "t"})
    assert (loaded.config.state.url, loaded.config.state.path) == (None, tmp_path / "s.db")


def test_an_unusable_state_url_is_refused_at_its_place(tmp_path: Path) -> None:
    """A URL of no known scheme is refused at state.url, its text (maybe a password) not repeated."""
    path = write(
        tmp_path, GOOD.replace("state: {path: ./state/db.sqlite}", "state: {url: 'mysql://u:hunter2@h/db'}")
    )
    result = check(path, {"ACME_TOKEN": "t"})
    assert result.returncode == 78
    assert f"{path}:2:" in result.stderr and "state.url" in result.stderr and "hunter2" not in result.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://ce@db.example:99999/x", "not a usable host or port"),
        ("postgresql://ce@db.example:abc/x", "not a usable host or port"),
        ("postgresql://ce@[::1/x", "not a usable host or port"),
        ("postgresql://ce@db.example/x?password=hunter2", "a password in the URL's query"),
        ("postgresql://ce@db.example/x?passfile=/etc/hunter2", "a passfile in the URL's query"),
    ],
)
def test_a_state_url_with_a_bad_port_or_a_password_is_refused_at_its_place(
    tmp_path: Path, url: str, message: str
) -> None:
    """A port out of range, a broken host or a password in the query: state.url's place, exit 78."""
    path = write(tmp_path, GOOD.replace("state: {path: ./state/db.sqlite}", f"state: {{url: '{url}'}}"))
    result = check(path, {"ACME_TOKEN": "t"})
    assert result.returncode == 78, result.stderr
    assert f"{path}:2:" in result.stderr and "state.url" in result.stderr and message in result.stderr
    assert "hunter2" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_an_ipv6_state_host_keeps_its_brackets(tmp_path: Path, registry: Registry) -> None:
    """The URL used and the one shown keep `[::1]:5432`, with the password put in or left out."""
    text = GOOD.replace(
        "state: {path: ./state/db.sqlite}",
        "state: {url: 'postgresql://ce@[::1]:5432/db?sslmode=require&passfile=x', password: {$env: PGPW}}",
    )
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write(tmp_path, text), registry, environ={"ACME_TOKEN": "t", "PGPW": "pw"})
    assert "a passfile in the URL's query" in caught.value.render()
    loaded = load_pipeline(
        write(tmp_path, text.replace("&passfile=x", "")), registry, environ={"ACME_TOKEN": "t", "PGPW": "pw"}
    )
    used = state_url(loaded.config.state)
    assert used == "postgresql://ce:pw@[::1]:5432/db?sslmode=require"
    assert display_url(used) == "postgresql://ce@[::1]:5432/db?sslmode=require"
    shown = display_url("postgresql://ce@h/db?password=hunter2&sslpassword=hunter2&sslmode=require")
    assert shown == "postgresql://ce@h/db?sslmode=require"


def test_check_refuses_a_state_database_it_cannot_reach_unless_offline(tmp_path: Path) -> None:
    """An unreachable PostgreSQL is a problem at state.url (no password shown); offline mode skips it."""
    url = "postgresql://ce@127.0.0.1:1/nowhere"
    text = GOOD.replace(
        "state: {path: ./state/db.sqlite}", f"state: {{url: '{url}', password: {{$env: PGPW}}}}"
    )
    path = write(tmp_path, text)
    result = check(path, {"PGPW": "hunter2", "ACME_TOKEN": "t"})
    assert result.returncode == 78
    assert (
        f"{path}:2:" in result.stderr
        and "state.url" in result.stderr
        and "127.0.0.1:1/nowhere" in result.stderr
    )
    assert "hunter2" not in result.stderr + result.stdout
    offline = check(path, {"PGPW": "hunter2", "ACME_TOKEN": "t"}, "--allow-unresolved-secrets")
    assert offline.returncode == 0, offline.stderr


async def test_check_refuses_a_state_a_newer_ce_daemon_wrote(tmp_path: Path, postgres_url: str) -> None:
    """`check` refuses a PostgreSQL schema newer than this build's, with the words `run` uses."""
    async with await open_url(postgres_url) as store, store.transaction() as tx:
        await tx.execute(
            "INSERT INTO schema_migrations (component, version, applied_at) VALUES ('spool', 99, 0)"
        )
    text = GOOD.replace("state: {path: ./state/db.sqlite}", f"state: {{url: {postgres_url}}}")
    result = check(write(tmp_path, text), {"ACME_TOKEN": "t"})
    assert result.returncode == 78
    assert "was written by a newer ce-daemon (spool schema 99" in result.stderr
    assert "state.url" in result.stderr
