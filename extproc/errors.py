"""The exception tree: every error the cache raises on purpose, and the outcome each reports.

Errors that end a lookup or a store carry the ``reason`` the decision reports, so the request
processor maps all of them in one place (``except OutcomeError as exc: exc.reason``)::

    SemanticCacheError
    ├── ConfigError                 the configuration is invalid (start-up, live reload, check-config)
    └── OutcomeError                ends a lookup or a store; ``reason`` is what the decision reports
        ├── NotCacheable            the request cannot take part in caching (bypass: the parse reason)
        ├── NotStorable             the response must not be stored (store skip: the parse reason)
        ├── BackendUnavailable      the backend cannot serve now       (``backend_unavailable``)
        ├── EmbeddingFailed         the embedding model raised         (``embedding_error``)
        ├── Overloaded              the embedding backlog exceeds the latency budget (``overloaded``)
        └── DataRejected            this call's data is refused, the backend is fine (``data_rejected``)
            └── EntryTooLarge       the entry exceeds a backend limit  (``too_large``)

Only :class:`BackendUnavailable` says anything about the backend's health: a
:class:`DataRejected` is one caller's bad value (text that is not valid Unicode, a field longer
than its column, a number out of range) and never counts toward a circuit breaker, so one
tenant's data cannot switch the cache off for the others.

Anything else that escapes a lookup is ``backend_error`` and a timeout is ``lookup_timeout``
(:func:`extproc.dataplane.decision.lookup_failure_reason`). This module imports nothing, so every
layer may raise these.
"""

from __future__ import annotations


class SemanticCacheError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(SemanticCacheError, ValueError):
    """The configuration is invalid; the message names the key path and the fix."""


class OutcomeError(SemanticCacheError):
    """Ends a lookup or a store; ``reason`` is the bypass or store-skip reason it reports."""

    reason = "internal_error"

    def __init__(self, reason: str | None = None, message: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        super().__init__(message if message is not None else self.reason)


class NotCacheable(OutcomeError):
    """The request cannot take part in caching; ``reason`` is the bypass reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class NotStorable(OutcomeError):
    """A response that must not be stored; ``reason`` is the store-skip reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class BackendUnavailable(OutcomeError):
    """The backend cannot serve now (not connected, breaker open, schema mismatch…)."""

    reason = "backend_unavailable"

    def __init__(self, message: str = "") -> None:
        super().__init__(message=message)


class EmbeddingFailed(OutcomeError):
    """The embedding model raised (bypass reason ``embedding_error``)."""

    reason = "embedding_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message=message)


class Overloaded(OutcomeError):
    """Waiting for an embedding would exceed ``max_added_latency_ms``: skip (reason ``overloaded``)."""

    reason = "overloaded"

    def __init__(self, message: str = "") -> None:
        super().__init__(message=message)


class DataRejected(OutcomeError):
    """The backend refused this call's data (a data error, not an outage; skip reason ``data_rejected``)."""

    reason = "data_rejected"

    def __init__(self, message: str = "") -> None:
        super().__init__(message=message)


class EntryTooLarge(DataRejected):
    """The entry does not fit the backend's limits (store-skip reason ``too_large``)."""

    reason = "too_large"

    def __init__(self, message: str = "") -> None:
        super().__init__(message=message)
