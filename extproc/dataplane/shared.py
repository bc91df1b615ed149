"""What the streams of one server share."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from extproc.cache import SemanticCache
from extproc.cache.singleflight import InFlight
from extproc.config.settings import CacheSettings
from extproc.dataplane.decision import Decision
from extproc.observability.loop_lag import LoopLag

if TYPE_CHECKING:
    from extproc.dataplane.verification import Verification

HEADER = "x-semantic-cache"
MAX_SCOPE_CHARS = 256
"""A longer scope header value is treated as missing (the request bypasses)."""
Spawn = Callable[[Coroutine[Any, Any, None]], None]


@dataclass
class Shared:
    """What every stream of one server shares."""

    settings: CacheSettings
    cache: SemanticCache
    spawn: Spawn
    """Runs a coroutine in the background, tracked for graceful shutdown."""
    on_decision: Callable[[Decision], None] = lambda d: None
    """Called once per request with its final decision (metrics, logs)."""
    inflight: InFlight = field(default_factory=InFlight)
    """Identical misses being fetched now (single-flight)."""
    paused: bool = False
    """The admin API's pass-through switch is off: every request bypasses, whatever a policy
    says (``enabled: false`` in the file leaves a policy's ``enabled: true`` caching its traffic)."""
    config_error: str = ""
    """Why the config file as it is now was not applied ("" when it is valid); /readyz and metrics."""
    english_only: bool = False
    """The embedding model reads English only: prompts mostly in other scripts match exactly only."""
    loop_lag: LoopLag = field(default_factory=LoopLag)
    """How late the event loop runs (admission control adds it to the predicted wait)."""
    verification: Verification | None = None
    """Shadow verification, the false-hit bound, entry ids and feedback (docs/verification.md)."""
