"""The state store: one API over SQLite (embedded default) and PostgreSQL (scale-out).

Nothing outside this package names a driver: callers write neutral SQL with ``:name`` placeholders
(see :mod:`ce_daemon.store.base`) and each backend translates it.
"""
