"""No configured secret in any output: scrubbing at the exits, and bounded quotes of remote text.

A sink or an API may quote our own request back in an error body (a proxy that echoes the headers
it got, ``Authorization`` included); that text travels on in exception messages. Rather than trust
every plugin to clean what it quotes, each place where text leaves the process scrubs it, in one
place per exit: application logs (:func:`scrub_event`, a structlog processor), the status snapshot
(control socket and saved copy), the syslog health channel, sd_notify ``STATUS=`` lines and
dead-letter reasons. Each exit also cuts long strings to its own bound, *after* scrubbing, so that a
cut never leaves the start of a secret behind.

What is scrubbed: every secret value of the loaded pipeline (each value a ``$env``/``$file``/
``$credential`` reference resolved to, and every ``SecretStr`` of the validated settings: tenant
tokens, sink options), remembered by :func:`remember_pipeline` when a pipeline loads (start, reload).
Values once remembered stay scrubbed for the life of the process: text quoting a secret of a
replaced generation may still be on its way out. A value shorter than :data:`MIN_LENGTH` characters
is not scrubbed: replacing ``abc`` everywhere would garble every line while hiding nothing. Besides
the value itself, its JSON-escaped and percent-encoded forms are scrubbed (an echo in a JSON body, a
secret in a URL), and so is the start of a secret left at the end of a text a plugin cut short.

Forms a plugin derives from a secret before it goes on the wire (HTTP basic's base64
``user:password``, an OAuth access token fetched at run time) are unknown to the configuration: the
plugin registers them with :func:`register` (``ce_daemon.http.basic`` and ``OAuth2Token`` do).
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from ce_daemon.config.load import LoadedPipeline

MARKER = "[REDACTED]"
"""What a secret is replaced with."""
MIN_LENGTH = 6
"""Shorter values are not scrubbed (see the module docstring)."""
DERIVED_KEPT = 256
"""How many registered derived values are kept (the newest): renewed access tokens come and go."""

LOG_LIMIT = 32_000
"""Characters of one value of an application log line (a traceback fits; a 10 MB error page does not)."""
STATUS_LIMIT = 1_000
"""Characters of one string in the status snapshot (a component's detail, a reload problem)."""
SYSLOG_LIMIT = 300
"""Characters of one field of a syslog health message (messages stay well under 2 KB)."""
NOTIFY_LIMIT = 400
"""Characters of the sd_notify ``STATUS=`` line (what ``systemctl status`` shows)."""
DEAD_LETTER_LIMIT = 2_000
"""Characters of a dead letter's reason."""
REMOTE_LIMIT = 300
"""Characters of a remote answer quoted in an error message (``ce_daemon.http.excerpt``)."""

_ELLIPSIS = "…"
_TAIL_JUNK = " \t\r\n.…\"'"


class Redactor:
    """The secret values of this process and the scrubbing of text against them."""

    def __init__(self) -> None:
        self._configured: set[str] = set()
        self._derived: dict[str, None] = {}  # insertion-ordered: the oldest goes first
        self._lock = threading.Lock()  # a log line may be written from a worker thread
        self._pattern: re.Pattern[str] | None = None
        self._values: tuple[str, ...] = ()

    def remember(self, values: Iterable[str]) -> None:
        """Scrub these configured secret values from now on (values too short are ignored)."""
        with self._lock:
            before = len(self._configured)
            self._configured.update(v for v in values if len(v) >= MIN_LENGTH)
            if len(self._configured) != before:
                self._rebuild()

    def register(self, value: str | SecretStr) -> None:
        """Scrub a value derived from a secret (an encoded credential, a fetched token) from now on."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if len(text) < MIN_LENGTH:
            return
        with self._lock:
            if text in self._derived or text in self._configured:
                return
            self._derived[text] = None
            while len(self._derived) > DERIVED_KEPT:
                del self._derived[next(iter(self._derived))]
            self._rebuild()

    def forget_all(self) -> None:
        """Forget every value (for tests)."""
        with self._lock:
            self._configured.clear()
            self._derived.clear()
            self._rebuild()

    def _rebuild(self) -> None:
        values = tuple(self._configured) + tuple(self._derived)
        forms = {form for value in values for form in _forms(value)}
        self._values = values
        if not forms:
            self._pattern = None
            return
        # Longest first, so that a secret containing another is replaced whole.
        alternatives = sorted(forms, key=lambda form: (-len(form), form))
        self._pattern = re.compile("|".join(map(re.escape, alternatives)))

    def scrub(self, text: str, limit: int | None = None) -> str:
        """``text`` with every secret replaced by :data:`MARKER`, then cut to ``limit`` characters."""
        pattern, values = self._pattern, self._values
        if pattern is not None:
            text = _cut_secret_tail(pattern.sub(MARKER, text), values)
        if limit is not None and len(text) > limit:
            text = text[: max(0, limit - len(_ELLIPSIS))] + _ELLIPSIS
        return text

    def scrub_data(self, value: Any, limit: int | None = None) -> Any:
        """A copy of JSON-like ``value`` with every string in it scrubbed and cut (keys are kept)."""
        if isinstance(value, str):
            return self.scrub(value, limit)
        if isinstance(value, Mapping):
            return {key: self.scrub_data(item, limit) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub_data(item, limit) for item in value]
        return value


def _forms(value: str) -> set[str]:
    """The value and the escaped forms in which it may come back: JSON-escaped, percent-encoded."""
    forms = {value, orjson.dumps(value).decode()[1:-1], urllib.parse.quote(value, safe="")}
    return {form for form in forms if len(form) >= MIN_LENGTH}


def _cut_secret_tail(text: str, values: tuple[str, ...]) -> str:
    """Replace the start of a secret left at the very end of ``text`` (a quote someone cut short)."""
    end = len(text.rstrip(_TAIL_JUNK))
    for value in values:
        head = value[:MIN_LENGTH]
        lowest = max(0, end - len(value))
        start = text.rfind(head, lowest, end)
        while start != -1:
            if value.startswith(text[start:end]):
                return text[:start] + MARKER + text[end:]
            start = text.rfind(head, lowest, start + len(head) - 1)  # earlier, overlapping ones too
    return text


_default = Redactor()

remember = _default.remember
register = _default.register
scrub = _default.scrub
scrub_data = _default.scrub_data
forget_all = _default.forget_all


def remember_pipeline(loaded: LoadedPipeline) -> None:
    """Scrub every secret value of ``loaded`` from now on (called when a pipeline loads)."""
    remember(pipeline_secrets(loaded))


def pipeline_secrets(loaded: LoadedPipeline) -> set[str]:
    """Every secret value of a loaded pipeline: resolved references and ``SecretStr`` settings."""
    found = set(_secret_strings(loaded.config))
    for job, resolved in loaded.resolved_jobs():
        for holder in job.secret_holders(resolved):
            found.update(_secret_strings(holder))
    source = loaded.source
    for loc in source.secret_paths:  # references may sit in plain fields too (a header's value)
        value: Any = source.data
        for part in loc:
            if isinstance(value, dict):
                value = value.get(part)
            elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
                value = value[part]
            else:
                value = None
        if isinstance(value, str):
            found.add(value)
    return found


def _secret_strings(value: Any) -> Iterator[str]:
    """The ``SecretStr`` values anywhere inside pydantic models, mappings and sequences."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_strings(getattr(value, name))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _secret_strings(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _secret_strings(item)


def scrub_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: every value of the event scrubbed and cut to :data:`LOG_LIMIT`."""
    return {key: _scrub_log_value(value) for key, value in event.items()}


def _scrub_log_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value, LOG_LIMIT)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping | list | tuple):
        return scrub_data(value, LOG_LIMIT)
    text = str(value)  # an exception or a path passed as a value: rendered as text either way
    cleaned = scrub(text, LOG_LIMIT)
    return value if cleaned == text else cleaned
