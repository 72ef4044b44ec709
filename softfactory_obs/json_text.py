"""JSON text every writer here shares (log lines, health bodies): values json can always write, and
UTC timestamps spelled once per second."""

from __future__ import annotations

import math
import time
from typing import Any

_second_cache: tuple[int, str] = (-1, "")
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def iso_utc(created: float) -> str:
    """2026-11-22T05:39:49.123Z, from seconds since the epoch (``time.time()``, ``record.created``)."""
    return iso_utc_ms(math.floor(created * 1000))


def iso_utc_ms(ms: int) -> str:
    """``iso_utc`` of whole milliseconds since the epoch (``math.floor(time.time() * 1000)``), the
    access line's clock. The part up to the second is formatted once per second, the milliseconds
    taken from a table."""
    global _second_cache  # noqa: PLW0603 - a module-level cache swapped atomically
    second, milli = divmod(ms, 1000)
    cached_second, text = _second_cache  # one tuple, swapped whole: threads never see a mixed pair
    if cached_second != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache = (second, text)
    return text + _MILLIS[milli]


def json_fallback(value: Any) -> Any:
    """What json writes for a value it cannot: bytes decoded, sets and tuples as lists, the rest as text."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def json_safe(value: Any, _open: frozenset[int] = frozenset()) -> Any:
    """A copy json can write, for a record (or a health body) it refused: NaN and infinities as
    strings (json writes them as bare, invalid tokens), keys that are not strings as text (a tuple
    key raised TypeError), sets and tuples as lists, a container inside itself as "<cycle>"."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if not isinstance(value, (dict, list, tuple, set, frozenset)):
        return value
    if id(value) in _open:
        return "<cycle>"
    inner = _open | {id(value)}
    if isinstance(value, dict):
        return {_key_text(k): json_safe(v, inner) for k, v in value.items()}
    return [json_safe(v, inner) for v in value]


def _key_text(key: Any) -> str:
    """A dict key as text: bytes decoded, a tuple as Python spells it, an unprintable one named."""
    if isinstance(key, (bytes, bytearray)):
        return key.decode("utf-8", "backslashreplace")
    try:
        return str(key)
    except Exception:
        return f"<unprintable {type(key).__name__}>"
