"""The one filter language of every rule: Mongo-style queries compiled once into predicates.

Netskope Cloud Exchange stores its business rules as Mongo queries, so the same shape is accepted
here, written in YAML or given as the JSON string CE exports::

    severity: high                               # a bare value means $eq
    alert_type: {$in: [DLP, Malware]}
    user_info.department: {$ne: sales}           # dotted paths reach into nested records
    $or: [{cci: {$lt: 50}}, {app: {$regex: "^drop", $options: i}}]

Operators: ``$eq $ne $in $nin $gt $gte $lt $lte $regex`` (with ``$options`` of ``imsx``)
``$exists $not $and $or $nor``, plus ``$contains`` (substring) and ``$startswith``.

Semantics follow Mongo where users would notice: a list field matches when any element does,
``$ne``/``$nin`` hold when the field is missing, ``{field: null}`` matches a missing field, bool is
never a number, comparisons across types are simply false, and a mapping without operators is
compared whole (``{host: {os: Linux}}`` is exact equality, not a nested match). A path that crosses
a list of objects (``users.name``) looks into every object of the list.

A spec is compiled once into nested closures; evaluation never parses, never uses ``eval`` and
never raises, whatever the record holds. Every problem of a spec is reported at once in a
:class:`FilterError`, each with its ``loc`` inside the spec.
"""

from __future__ import annotations

from ce_daemon.filter.compiler import compile_filter, describe, fields_read, match_all
from ce_daemon.filter.problems import FilterError, FilterProblem, Loc
from ce_daemon.filter.values import Predicate

__all__ = [
    "FilterError",
    "FilterProblem",
    "Loc",
    "Predicate",
    "compile_filter",
    "describe",
    "fields_read",
    "match_all",
]
