"""The ``teams`` ticket destination: an Adaptive Card per ticket through a Teams webhook or Workflows URL."""

from __future__ import annotations

from ce_teams.sink import TeamsOptions, TeamsSink

__all__ = ["TeamsOptions", "TeamsSink"]
