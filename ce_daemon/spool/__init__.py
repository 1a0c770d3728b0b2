"""The durable spool: pages of records between the producers (pollers) and their consumers (routes).

:mod:`ce_daemon.spool.store` holds the pages, the consumers' offsets and the space accounting;
:mod:`ce_daemon.spool.codec` how a page is stored.
"""

from ce_daemon.spool.codec import SpoolCorruptError, UnencodableRecordsError
from ce_daemon.spool.store import SPOOL_MIGRATIONS, Page, PageCommit, Spool, peek_pages

__all__ = [
    "SPOOL_MIGRATIONS",
    "Page",
    "PageCommit",
    "Spool",
    "SpoolCorruptError",
    "UnencodableRecordsError",
    "peek_pages",
]
