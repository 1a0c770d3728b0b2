"""The Cloud Ticket Orchestrator as a job: alerts → rules → mute → dedup → outbox → ticket destinations."""
