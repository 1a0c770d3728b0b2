"""The Netskope tenant simulator: a fake tenant for tests, the demo and the benchmarks.

Apart from the client and pollers (`ce_daemon.netskope`), which it must never share code with
beyond the API's vocabulary (`ce_daemon.netskope.subtypes`): it plays the other side of the wire.

- `tenant`: the server (`TenantSimulator`, `running_simulator`) and how it decides each answer.
- `iterator`: timelines, server-side cursors and rate windows (no I/O).
- `records`, `record_shapes`: deterministic records; `render`: page bodies.
- `policy`: the URL-list and file-hash-list endpoints; `policy_lists`: the lists they hold.
- `uba`: the users' UCI and its endpoints (getuci, uciimpact, allow, reset); `scim`: SCIM users and groups.
- `faults`: scripted faults; `control`: the ``/_sim/`` test endpoints; `reports`: what a test reads back.
- `command`: ``ce-daemon simulate``; `process`: that command as a child process.
"""
