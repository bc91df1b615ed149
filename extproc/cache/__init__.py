"""The cache: :class:`SemanticCache` in front of interchangeable backends."""

from .memory import MemoryBackend
from .schema import CacheBackend, CacheEntry, CacheQuery, Candidate, LookupResult
from .semantic import Guard, SemanticCache

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
