# The C writer (_native.c); ce_daemon/logs/native.py is its only user.
from collections.abc import Callable
from typing import Any

ABI: int

class Writer:
    def __init__(
        self,
        head: tuple[str | Callable[[Any], str | None] | tuple[str, str | None, int], ...],
        steps: tuple[tuple[bytes, str, Any, Any, bytes | None, bytes | None, bool, int], ...],
        mode: int,
        delimiter: str,
        joint: bytes,
        render_text: Callable[[Any], str | None],
    ) -> None: ...
    def __call__(self, record: Any) -> bytes: ...
