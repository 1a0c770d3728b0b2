"""Access control of the HTTP listener: API tokens, local users and their sessions, and the audit log.

Credentials live in the state database (both backends), hashed; the listener checks them on every
request but liveness (:mod:`ce_daemon.access.guard`); ``ce-daemon token|user|audit`` manage them
(:mod:`ce_daemon.access.commands`).
"""

from ce_daemon.access.credentials import Principal, Role
from ce_daemon.access.store import ACCESS_MIGRATIONS, AccessStore, AuditLog

__all__ = ["ACCESS_MIGRATIONS", "AccessStore", "AuditLog", "Principal", "Role"]
