"""Several nodes sharing the work: leases with fencing tokens on PostgreSQL.

Each unit of work (a stream's poller, a route's consumer) is held by one node at a time through a row
of ``ce_leases``. `manager.LeaseManager` keeps this node's share (`balance`), renews it, and
gives each started unit a `handle.LeaseHandle`: its `Fence` for commits (`ce_daemon.store.base`) and
`held()` before every request, which turns False before any other node could take the lease over.
``status`` reads who holds what; ``schema`` holds the tables; ``settings`` the ``cluster:`` section.
"""
