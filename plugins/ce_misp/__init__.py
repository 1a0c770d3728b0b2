"""MISP as a threat-exchange source (``misp`` in ``ce_daemon.threat_sources``) and destination
(``misp`` in ``ce_daemon.threat_sinks``).

Both talk to MISP's REST API with ``Authorization: <key>`` and ``Accept: application/json``
(:mod:`ce_misp.client`). MISP's 403 is a refused key (:class:`AuthError`), 429 and 5xx are
transient (``Retry-After`` honoured), an answer that is not JSON or not of MISP's shape is transient
too, quoted in the error; answers are read within ``max_body``.

Options both take:

- ``url`` (required): the instance's base URL, ``https://misp.example.org``.
- ``key`` (required, a secret): the API key (``{$env: MISP_KEY}``).
- ``timeout`` (30s): how long one request may take; ``tls``: ``verify``, ``ca_file``,
  ``client_cert``, ``client_key``, ``min_version``; ``headers``: extra request headers.
- ``max_body`` (64MiB): the largest answer read.

The source (:mod:`ce_misp.source`) pulls ``POST /attributes/restSearch`` incrementally: the
checkpoint is the largest ``attribute_timestamp`` read (epoch seconds, as a string), pages are read
in timestamp order. Its options:

- ``page_size`` (1000, at most 10000): attributes per page (``limit``).
- ``initial_lookback`` (7d): how far back the first poll reaches.
- ``tags`` ([]): only attributes carrying one of these tags (on the attribute or its event).
- ``exclude_tags`` ([]): never attributes carrying one of these; the daemon's own push tag
  (``Pull.exclude_tags``) is excluded the same way, by MISP (``!tag``) and again here.
- ``to_ids_only`` (true): only attributes flagged for detection (``to_ids``).
- ``types`` (all): restrict to some MISP types among ``url link domain hostname ip-src ip-dst
  ip-src|port ip-dst|port domain|ip hostname|port md5 sha1 sha256 filename|md5 filename|sha1
  filename|sha256``. Without it, attributes of other types are counted as refused.
- ``max_pages`` (1000): the most pages one poll reads; the next poll goes on from there.

Types map as ``url``/``link`` → url, ``domain`` → domain, ``hostname`` → hostname, ``ip-*`` → ipv4
or ipv6 (the IP part of ``ip-*|port``), hashes as they are (the hash part of ``filename|*``),
``domain|ip`` → its domain, ``hostname|port`` → its hostname. Severity is the event's
``threat_level_id`` (1 high, 2 medium, 3 low, 4 unknown); tags are the attribute's and the event's;
the comment is the attribute's; ``seen`` is its ``last_seen`` when set, else its timestamp.

The destination (:mod:`ce_misp.sink`) keeps one event per push tag, found by its info and that tag
or created, and adds (``to_ids``, tagged with the push tag) or soft-deletes its attributes; it takes
all eight indicator types (ipv4 and ipv6 as ``ip-dst``). What the event holds is looked up by
``/attributes/restSearch`` on the event, paged, rather than by viewing the whole event (bounded
however large it grows). An event MISP creates without the push tag (a user who may not tag) is a
configuration error: untagged, it would never be found again. Its options:

- ``event_info`` ("ce-daemon shared indicators"): the event's info, searched for exactly.
- ``distribution`` (0, your organisation only; up to 3, all communities) and ``threat_level_id``
  (4, undefined): the event's, when it is created.
- ``batch_size`` (500): attributes per add request, and values per look-up.
- ``page_size`` (1000): attributes per page when looking at what the event holds.
- ``sightings`` (false): add a sighting (``/sightings/add``, type 0) of each value added, with
  ``sighting_source`` ("ce-daemon") as its source.
"""

from __future__ import annotations

from ce_misp.sink import MispSink, MispSinkOptions
from ce_misp.source import MispSource, MispSourceOptions

__all__ = ["MispSink", "MispSinkOptions", "MispSource", "MispSourceOptions"]
