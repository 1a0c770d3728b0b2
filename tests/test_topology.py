"""The reload diff (`topology.Difference`) and the keys components and streams are named by."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ce_daemon.keys import ComponentKey, StreamKey
from ce_daemon.topology import Difference


@dataclass(frozen=True)
class Planned:
    fingerprint: str


OLD = {"poller:t/alerts/dlp": Planned("1"), "route:a": Planned("2"), "route:b": Planned("3")}
NEW = {"poller:t/alerts/dlp": Planned("1"), "route:a": Planned("9"), "route:c": Planned("4")}


def test_difference_sorts_components_by_name_and_fingerprint() -> None:
    """Same name and fingerprint: kept; same name, other fingerprint: changed; the rest added or removed."""
    difference = Difference.between(OLD, NEW)
    assert difference == Difference(
        added=("route:c",), changed=("route:a",), removed=("route:b",), kept=("poller:t/alerts/dlp",)
    )
    assert difference.to_start == ("route:a", "route:c")
    assert difference.to_stop == ("route:a", "route:b")
    assert not difference.unchanged


def test_reverse_is_the_difference_back() -> None:
    """The reverse of old → new is new → old: what a rollback applies."""
    difference = Difference.between(OLD, NEW)
    assert difference.reverse() == Difference.between(NEW, OLD)
    assert difference.reverse().reverse() == difference


def test_a_plan_against_itself_changes_nothing() -> None:
    """Reloading an unchanged file keeps every component."""
    difference = Difference.between(OLD, dict(OLD))
    assert difference.unchanged and difference.kept == tuple(sorted(OLD))
    assert Difference.between({}, {}).unchanged


def test_keys_render_the_names_operators_see_and_parse_them_back() -> None:
    """`poller:tenant/kind/subtype`, `history:…`, `route:name`: written and read in one place."""
    stream = StreamKey("acme", "alerts", "dlp")
    assert str(stream) == stream.key == "acme/alerts/dlp"
    assert StreamKey.parse("acme/events/page") == StreamKey("acme", "events", "page")
    assert str(ComponentKey.poller(stream)) == "poller:acme/alerts/dlp"
    assert str(ComponentKey.history(stream)) == "history:acme/alerts/dlp"
    assert ComponentKey.parse("route:to-siem") == ComponentKey("route", "to-siem")
    assert ComponentKey.parse(str(ComponentKey.poller(stream))).name == str(stream)


@pytest.mark.parametrize("text", ["acme", "acme/alerts", "acme/logs/dlp", "/alerts/dlp"])
def test_a_stream_key_that_names_no_stream_is_refused(text: str) -> None:
    """Not tenant/alerts|events/subtype: ValueError naming what was given."""
    with pytest.raises(ValueError, match=r"stream key|alerts|events"):
        StreamKey.parse(text)


@pytest.mark.parametrize("text", ["route", ":a", "route:"])
def test_a_component_key_without_role_or_name_is_refused(text: str) -> None:
    """Not role:name: ValueError."""
    with pytest.raises(ValueError, match="component key"):
        ComponentKey.parse(text)
