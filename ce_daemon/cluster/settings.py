"""How a node takes part in a cluster: its name and the timing of its leases."""

from __future__ import annotations

import os
import socket
from typing import Annotated, Self

from pydantic import Field, model_validator

from ce_daemon.config.values import Duration, SettingError, Strict


def default_node_name() -> str:
    """``<hostname>-<pid>``: unique among the live processes of the machines sharing one database."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ClusterSettings(Strict):
    """The ``cluster:`` section: a node's name and its lease timing.

    ``lease_ttl`` bounds the takeover time after a node dies (a lease expires ``lease_ttl`` after its
    last renewal, then the survivors take it in their next round, which they schedule for that very
    moment); ``renew_every`` is how often a node renews its leases and heartbeat, and balances when
    nothing wakes it sooner; ``safety_margin`` is how long before the database's expiry a node stops
    driving its units on its own (it cannot know the database's clock: it counts from when it sent
    its last successful renewal). Defaults: 15 s, 5 s, 3 s; a dead node's units move in 15 s at most.
    """

    node_name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s;]+$")] = Field(
        default_factory=default_node_name
    )
    lease_ttl: Annotated[Duration, Field(ge=1, le=600)] = 15.0
    renew_every: Annotated[Duration, Field(gt=0)] | None = None
    safety_margin: Annotated[Duration, Field(gt=0)] | None = None

    @property
    def renew_interval(self) -> float:
        """Seconds between two renewals (``renew_every``, else a third of ``lease_ttl``)."""
        return self.renew_every if self.renew_every is not None else self.lease_ttl / 3

    @property
    def margin(self) -> float:
        """Seconds a node stops driving before its leases can expire (``safety_margin``, else ttl / 5)."""
        return self.safety_margin if self.safety_margin is not None else self.lease_ttl / 5

    @model_validator(mode="after")
    def _one_missed_renewal_is_tolerated(self) -> Self:
        # A handle stays held `ttl - margin` after a renewal was sent: two renewal rounds must fit in
        # it, or one slow round would have every poller of the node pause.
        if 2 * self.renew_interval > self.lease_ttl - self.margin:
            raise SettingError(
                f"renew_every {self.renew_interval:g}s is too long for lease_ttl {self.lease_ttl:g}s "
                f"and safety_margin {self.margin:g}s",
                "renew at most every (lease_ttl - safety_margin) / 2 seconds; the defaults are "
                "lease_ttl / 3 and lease_ttl / 5",
            )
        return self
