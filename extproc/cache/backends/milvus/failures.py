"""Telling a failed Milvus call's cause: the call's data (one caller's problem) or the connection.

Only connection failures (transport errors, timeouts, a server that cannot serve) say something
about Milvus' health and count toward the circuit breaker.  A call whose data Milvus or pymilvus
refused (a string longer than its VARCHAR, text that is not valid Unicode, an expression that
does not parse) proves nothing about the connection: it fails that one call and nothing else.
Anything not recognised as a data error counts as a connection failure, so a real outage still
opens the breaker.
"""

from __future__ import annotations

from collections.abc import Iterator

DATA_CODES = frozenset({1100, 1101, 1102})
"""Milvus merr codes of invalid input: ErrParameterInvalid, ErrParameterMissing, ErrParameterTooLarge."""
DATA_MESSAGES = (
    "cannot parse expression",
    "failed to create expr plan",
    "exceeds max length",
    "invalid parameter",
    "unknown escape sequence",
)
"""Server messages of invalid input that Milvus 2.3 reports with the catch-all code 65535 (and
Milvus Lite's expression parser with code 6, e.g. for the ``\\u0001`` JSON writes for U+0001)."""
DATA_EXCEPTIONS = frozenset(
    {
        "ParamError",
        "DataTypeNotMatchException",
        "DataTypeNotSupportException",
        "DataNotMatchException",
        "PrimaryKeyException",
        "PartitionKeyException",
        "FieldTypeException",
        "FieldsTypeException",
    }
)
"""pymilvus' own checks of the data it is given, raised before anything is sent (by class name)."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_data_error(exc: BaseException) -> bool:
    """True when ``exc`` is Milvus or pymilvus refusing the call's data, not a connection problem."""
    for error in _chain(exc):
        if isinstance(error, UnicodeError):  # pymilvus wraps it as "Unexpected error"
            return True
        if type(error).__name__ in DATA_EXCEPTIONS:
            return True
        code = getattr(error, "code", None)
        if isinstance(code, int) and code in DATA_CODES:
            return True
        message = str(getattr(error, "message", "") or "").lower()
        if type(error).__name__ == "MilvusException" and any(m in message for m in DATA_MESSAGES):
            return True
    return False


def duplicate_rows(exc: BaseException) -> bool:
    """True when a Milvus 2.3 search failed fetching its output by id because an id has two rows."""
    return any("incomplete query result" in str(getattr(e, "message", "") or e) for e in _chain(exc))


def auth_error(exc: BaseException) -> bool:
    """True when ``exc`` reads like an authentication failure (wrong user or password)."""
    text = str(exc).lower()
    return any(w in text for w in ("auth", "password", "unauthenticated", "credential"))


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, for logs and admin answers (never a whole row)."""
    message = str(getattr(exc, "message", "") or exc).strip().splitlines()
    first = message[0][:limit] if message else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
