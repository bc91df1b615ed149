"""The cache: :class:`SemanticCache` in front of interchangeable backends."""

from extproc.cache.backends.memory import MemoryBackend
from extproc.cache.guards.base import Guard
from extproc.cache.schema import CacheBackend, CacheEntry, CacheQuery, Candidate, LookupResult
from extproc.cache.semantic import SemanticCache

__all__ = [
    "CacheBackend",
    "CacheEntry",
    "CacheQuery",
    "Candidate",
    "Guard",
    "LookupResult",
    "MemoryBackend",
    "SemanticCache",
]
