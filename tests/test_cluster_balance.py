"""The balancing rule on its own: rounds of nodes against an in-memory lease table."""

from __future__ import annotations

from ce_daemon.cluster.balance import LeaseRow, plan, share


class Table:
    """``ce_leases`` reduced to what a round reads and writes (no expiry: every node stays alive)."""

    def __init__(self, units: list[str]) -> None:
        self.units = units
        self.holder: dict[str, str] = {}
        self.moves = 0

    def round(self, node: str, live: list[str]) -> None:
        held = {unit for unit, holder in self.holder.items() if holder == node}
        rows = [LeaseRow(unit, holder, 1, 10.0) for unit, holder in self.holder.items()]
        todo = plan(node, self.units, held, rows, live)
        for unit in todo.release:
            del self.holder[unit]
            self.moves += 1
        for unit in todo.acquire:
            if unit not in self.holder:
                self.holder[unit] = node
                self.moves += 1

    def shares(self, live: list[str]) -> list[int]:
        return sorted(sum(1 for holder in self.holder.values() if holder == node) for node in live)


UNITS = [f"u{n}" for n in range(9)]


def test_share_is_the_ceiling() -> None:
    """Each node aims at ceil(units / nodes), so the shares always cover every unit."""
    assert [share(9, 3), share(10, 3), share(10, 4), share(3, 0)] == [3, 4, 3, 3]


def test_nodes_joining_one_by_one_converge_and_then_stay_put() -> None:
    """One node takes all; each joiner gets its share in one round of each; more rounds move nothing."""
    table = Table(UNITS)
    live = ["a"]
    table.round("a", live)
    assert table.shares(live) == [9]
    for joiner in ("b", "c"):
        live.append(joiner)
        for node in live:  # the others release their extras, then the joiner takes them
            table.round(node, live)
        table.round(joiner, live)
    assert table.shares(live) == [3, 3, 3]
    moves = table.moves
    for _ in range(5):
        for node in live:
            table.round(node, live)
    assert table.moves == moves


def test_uneven_counts_cover_every_unit() -> None:
    """Ten units on four nodes: all held, nobody above ceil(10 / 4)."""
    table = Table([f"u{n}" for n in range(10)])
    live = ["a", "b", "c", "d"]
    for _ in range(2):
        for node in live:
            table.round(node, live)
    assert len(table.holder) == 10
    assert max(table.shares(live)) == 3


def test_released_and_removed_units_come_first_in_the_plan() -> None:
    """A unit no longer wanted is released even when the node is under its share."""
    rows = [LeaseRow("gone", "a", 1, 10.0), LeaseRow("u0", "a", 2, 10.0)]
    todo = plan("a", ["u0", "u1"], {"gone", "u0"}, rows, ["a"])
    assert todo.release == ("gone",)
    assert todo.acquire == ("u1",)


def test_orphans_and_expiry() -> None:
    """Rows of this node it does not hold are orphans; expired foreign leases are free; the next
    foreign expiry is when to look again."""
    rows = [
        LeaseRow("u0", "a", 1, 10.0),  # an earlier life of node a
        LeaseRow("u1", "b", 2, -1.0),  # expired
        LeaseRow("u2", "b", 3, 4.0),
    ]
    todo = plan("a", ["u0", "u1", "u2"], set(), rows, ["a", "b"])
    assert todo.orphans == (rows[0],)
    assert todo.acquire == ("u0", "u1")
    assert todo.wake_in == 4.0
