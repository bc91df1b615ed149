"""Micro-batching of sentence embeddings off the event loop (:class:`Embedder`).

Requests that arrive while a forward pass runs are queued and encoded together in the next
pass, so at high concurrency many requests share one batch, while a lone request is encoded
at once with no waiting window.  Up to ``workers`` passes run at once (ONNX Runtime releases
the GIL, so each pass can have a core of its own).  A pass that would run alone (nothing else
running or queued) goes to the ``solo`` encoder when there is one: the same model on every core
(on 2 cores a lone query took 3.9 ms there against 5.7 on one core's session).  Lookups go
before stores: a store's embedding waits until no lookup is queued.

The embedder also knows its backlog: :meth:`Embedder.expected_wait` predicts how long a new
query would wait for its vector, from the queue and a cost model fitted to recent passes.  The
cache uses it to skip the semantic lookup instead of queueing past the latency budget.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from extproc.embedding.base import EncodeFn, TokenWindow, WordVectors

log = logging.getLogger(__name__)

WORKER_NICE = 5
"""How much lower the embedding threads' CPU priority is than the rest of the process.

A forward pass is the one long CPU burst in the processor.  When passes fill every core, the
event loop (every ext_proc message, exact hits, pass-throughs) and an Envoy sharing the pod
would queue behind them; at a lower priority the passes get the CPU the rest leaves, so cheap
paths stay cheap under load and admission control sees the embedding queue grow instead.  Not
19: on a machine without per-container CPU groups the passes then yield to every other process
as well (a Milvus server beside it starved lone lookups past their budget in the test suite).
"""


def _lower_priority() -> None:
    """Executor initializer: lower this worker thread's priority by :data:`WORKER_NICE`."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICE))
    except (AttributeError, OSError) as exc:  # not Linux, or a sandbox forbidding it: keep the default
        log.debug("embedding threads keep their priority: %s", exc)


KEEP_WORDS = 256
"""Texts whose word vectors are kept from their sentence pass (the most recent first)."""
KEEP_WORDS_CHARS = 300
"""Only texts up to this long are kept (their token vectors are ~1.5 KB per token)."""


class CostModel:
    """Seconds per forward pass as ``fixed + per_item * n``, fitted online to recent passes.

    An exponentially weighted least-squares fit: recent passes count most, so the model follows
    a machine that slows down (a noisy neighbour) or speeds up (a warmed cache).
    """

    def __init__(self, fixed: float = 0.005, per_item: float = 0.001, decay: float = 0.05) -> None:
        self.fixed, self.per_item = fixed, per_item
        self._decay = decay
        self._w = self._n = self._t = self._nn = self._nt = 0.0

    def observe(self, n: int, seconds: float) -> None:
        """Fold in one pass of ``n`` texts that took ``seconds``."""
        keep = 1.0 - self._decay
        self._w = self._w * keep + 1.0
        self._n = self._n * keep + n
        self._t = self._t * keep + seconds
        self._nn = self._nn * keep + n * n
        self._nt = self._nt * keep + n * seconds
        mean_n, mean_t = self._n / self._w, self._t / self._w
        var = self._nn / self._w - mean_n * mean_n
        if var > 0.25:  # batch sizes vary enough to separate the fixed cost from the per-text one
            slope = (self._nt / self._w - mean_n * mean_t) / var
            self.per_item = max(slope, 1e-5)
            self.fixed = max(mean_t - self.per_item * mean_n, 0.0)
        else:  # one size seen so far: scale the whole cost with n
            self.per_item = max(mean_t / max(mean_n, 1.0) * 0.5, 1e-5)
            self.fixed = max(mean_t - self.per_item * mean_n, 0.0)

    def seconds(self, n: int) -> float:
        """Predicted duration of a pass of ``n`` texts."""
        return self.fixed + self.per_item * max(n, 1)


class WaitCorrection:
    """How far real lookup waits run past their predictions, learned from every lookup.

    The queue model sees the passes it started, not the CPU they share with the event loop,
    Envoy, or word-vector passes queued in the same executor; under a CPU crunch its waits come
    out short, and a lookup admitted on such a prediction then waits out the whole latency
    budget before it is shed.  Scaling the prediction by the recent ratio of real to predicted
    waits (an exponentially weighted mean, clamped) makes admission shed at the door instead.
    The mean rises faster than it falls: an optimistic prediction costs a request its budget, a
    pessimistic one only a semantic lookup.
    """

    def __init__(self, up: float = 0.2, down: float = 0.1, low: float = 0.5, high: float = 10.0) -> None:
        self.factor = 1.0
        """Real wait / predicted wait, recently."""
        self._up, self._down, self._low, self._high = up, down, low, high

    def observe(self, predicted: float, waited: float) -> None:
        """Fold in one lookup predicted to wait ``predicted`` seconds that waited ``waited``."""
        if predicted <= 0:
            return
        ratio = min(self._high, max(self._low, waited / predicted))
        self.factor += (self._up if ratio > self.factor else self._down) * (ratio - self.factor)


OVERLAP_WEIGHT = 0.1
"""Weight of the newest pass in :attr:`Embedder.overlap` (about the last 10 passes)."""
SOLO_MAX_OVERLAP = 0.2
"""The solo encoder runs a pass only while fewer passes than this overlapped lately."""

EncodePass = Callable[[Sequence[str]], Any]
"""One forward pass over a batch of texts (sentence vectors, or word vectors)."""


class _Queue:
    """Texts waiting for one encode function: lookups first, then stores."""

    def __init__(self, fn: EncodePass, solo: EncodePass | None) -> None:
        self.fn = fn
        self.solo = solo
        """The same function on every core, for a pass that runs alone (None: ``fn``)."""
        self.pending: list[tuple[str, asyncio.Future[Any]]] = []
        self.deferred: list[tuple[str, asyncio.Future[Any]]] = []
        """Store embeddings: taken only when no lookup waits."""
        self.running: list[tuple[int, float]] = []
        """(texts, start time) of each pass in flight."""

    def __len__(self) -> int:
        return len(self.pending) + len(self.deferred)

    def take(self, limit: int) -> list[tuple[str, asyncio.Future[Any]]]:
        """The next batch: queued lookups first, stores only to fill it."""
        batch = self.pending[:limit]
        del self.pending[:limit]
        if len(batch) < limit and self.deferred:
            room = limit - len(batch)
            batch += self.deferred[:room]
            del self.deferred[:room]
        return [(t, f) for t, f in batch if not f.done()]


class Embedder:
    """Async front of an encode function, with micro-batching on ``workers`` threads."""

    def __init__(
        self, encode: EncodeFn, dim: int, max_batch: int = 64, workers: int = 1, solo: EncodeFn | None = None
    ) -> None:
        self.dim = dim
        self.max_batch = max_batch
        self.workers = max(1, workers)
        self._encode = encode
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="embed", initializer=_lower_priority
        )
        words = getattr(encode, "words", None)
        with_words = getattr(encode, "with_words", None) if words is not None else None
        solo = solo if workers > 1 else None  # one worker: every pass is alone anyway
        self._words = _Queue(words, getattr(solo, "words", None)) if words is not None else None
        self._sentences = (
            _Queue(self._keeping_words(with_words), self._keeping_words(getattr(solo, "with_words", None)))
            if with_words is not None
            else _Queue(encode, solo)
        )
        self._queues = tuple(q for q in (self._sentences, self._words) if q is not None)
        """Every queue whose passes share the workers (what a new lookup may wait behind)."""
        self.window: TokenWindow | None = getattr(encode, "window", None)
        """What the model reads of a text (None: unknown, e.g. a remote endpoint)."""
        self._kept: OrderedDict[str, Callable[[], WordVectors]] = OrderedDict()
        """Word vectors of recently embedded texts, from their sentence pass (made when asked)."""
        self._kept_lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.cost = CostModel()
        """Seconds per sentence pass, fitted to the passes run so far."""
        self.correction = WaitCorrection()
        """Real / predicted lookup waits: scales :meth:`expected_wait`."""
        self.overlap = 0.0
        """Recent share of passes that started beside another pass or a queue (a moving mean)."""
        self.batches = 0
        self.encoded = 0
        self.on_batch: Callable[[int], None] | None = None
        """Called with each forward pass's batch size (metrics)."""

    @property
    def has_words(self) -> bool:
        """True when the model can give per-word vectors (see :meth:`embed_words`)."""
        return self._words is not None

    async def fits(self, text: str) -> bool:
        """True when the model reads all of ``text`` (its vector stands for the whole text; past
        the model's window, two texts that differ only in their tails get one vector)."""
        window = self.window
        if window is None:
            return True
        if window.must_count_off_loop(text):
            return await asyncio.to_thread(window.fits, text)
        return window.fits(text)

    @property
    def backlog(self) -> int:
        """Texts waiting for a sentence pass (not counting the passes in flight)."""
        return len(self._sentences)

    def expected_wait(self) -> float:
        """Seconds a new lookup would wait for its vector, queueing included (a prediction,
        corrected by how far recent waits ran past theirs)."""
        if self._idle_worker():
            # A pass starts at once: admit it uncorrected, or a factor learned in a crunch would
            # shed every lookup, and with no lookups nothing would ever correct it back.
            return self.cost.seconds(1)
        return self._queue_wait() * self.correction.factor

    def _idle_worker(self) -> bool:
        """True when a worker is free and no text waits: a new lookup's pass starts at once."""
        running = sum(len(q.running) for q in self._queues)
        return running < self.workers and not any(q.pending for q in self._queues)

    def _queue_wait(self) -> float:
        """The queue model's wait of a new lookup, before correction."""
        # Word-vector passes (the verifier's) run the same model on the same workers: a lookup
        # waits behind those queued too, at about a sentence pass's cost.
        # (A free worker and nothing ahead comes out as one pass: cost.seconds(1).)
        now = time.perf_counter()
        running = [slot for q in self._queues for slot in q.running]
        busy = sorted(max(0.0, start + self.cost.seconds(n) - now) for n, start in running)
        ahead = sum(len(q.pending) for q in self._queues)  # stores do not delay lookups
        rounds = math.ceil((ahead + 1) / (self.max_batch * self.workers))
        first_free = busy[0] if len(busy) >= self.workers else 0.0
        return first_free + rounds * self.cost.seconds(min(ahead + 1, self.max_batch))

    async def embed(self, text: str, deferred: bool = False) -> np.ndarray:
        """The normalized embedding of one text (batched with concurrent callers).

        ``deferred`` (stores) waits behind every queued lookup.
        """
        if deferred:
            stored: np.ndarray = await self._submit(self._sentences, text, deferred)
            return stored
        predicted, started = self._queue_wait(), time.perf_counter()
        try:
            result: np.ndarray = await self._submit(self._sentences, text)
        finally:  # a lookup given up on (its budget spent) waited at least this long: learn that too
            self.correction.observe(predicted, time.perf_counter() - started)
        return result

    async def embed_words(self, text: str) -> WordVectors:
        """Per-word contextual vectors of one text: from the text's own sentence pass when it was
        embedded recently (a lookup's query, a stored prompt), else a pass of their own on the
        same workers, batched the same way."""
        if self._words is None:
            raise RuntimeError(
                "this embedding model gives no word vectors; disable guard_content or use a "
                "sentence-transformers model with a fast (BERT-style) tokenizer"
            )
        with self._kept_lock:
            kept = self._kept.pop(text, None)
        if kept is not None:
            return kept()  # a few hundred µs of numpy: cheaper than a hop to a busy worker
        result: WordVectors = await self._submit(self._words, text)
        return result

    def _keeping_words(self, with_words: Any) -> Callable[[Sequence[str]], np.ndarray] | None:
        """The sentence pass of ``with_words``, keeping each short text's word vectors for
        :meth:`embed_words` (the verifier asks for the query's right after its lookup: no
        second forward pass)."""
        if with_words is None:
            return None

        def encode(texts: Sequence[str]) -> np.ndarray:
            vectors, later = with_words(texts)
            with self._kept_lock:
                for text, words in zip(texts, later, strict=True):
                    if len(text) <= KEEP_WORDS_CHARS:
                        self._kept[text] = words
                        self._kept.move_to_end(text)
                while len(self._kept) > KEEP_WORDS:
                    self._kept.popitem(last=False)
            return vectors

        return encode

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of many texts in batches of ``max_batch`` (for tools, not the hot path)."""
        loop = asyncio.get_running_loop()
        out = [
            await loop.run_in_executor(self._executor, self._encode, texts[i : i + self.max_batch])
            for i in range(0, len(texts), self.max_batch)
        ]
        return np.concatenate(out) if out else np.empty((0, self.dim), dtype=np.float32)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on an embedding worker thread (model calls stay on these threads)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _submit(self, queue: _Queue, text: str, deferred: bool = False) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        (queue.deferred if deferred else queue.pending).append((text, future))
        if len(queue.running) < self.workers:
            self._start_pass(queue)
        return await future

    def _start_pass(self, queue: _Queue) -> None:
        batch = queue.take(self.max_batch)
        if not batch:
            return
        alone = not any(q.running or len(q) for q in self._queues)
        self.overlap += OVERLAP_WEIGHT * ((0.0 if alone else 1.0) - self.overlap)
        # Alone now and seldom overlapped lately: on every core.  Under sustained load a pass
        # alone at its start is soon joined by others, and two cores' worth of threads then
        # contend with them (a run at 200 requests/s without this check: added p99 218 ms,
        # against 119-149 with it).
        solo = queue.solo if alone and self.overlap < SOLO_MAX_OVERLAP else None
        fn = solo or queue.fn
        slot = (len(batch), time.perf_counter())
        queue.running.append(slot)
        task = asyncio.get_running_loop().create_task(self._pass(queue, fn, batch, slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pass(
        self,
        queue: _Queue,
        fn: EncodePass,
        batch: list[tuple[str, asyncio.Future[Any]]],
        slot: Any,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, fn, [t for t, _ in batch])
        except Exception as exc:  # every waiter of the batch gets the error
            for _, f in batch:
                if not f.done():
                    f.set_exception(exc)
        else:
            if queue is self._sentences:
                self.cost.observe(len(batch), time.perf_counter() - slot[1])
                self.batches += 1
                self.encoded += len(batch)
                if self.on_batch is not None:
                    self.on_batch(len(batch))
            for (_, f), r in zip(batch, results, strict=True):
                if not f.done():
                    f.set_result(r)
        finally:
            queue.running.remove(slot)
            if len(queue):  # what queued meanwhile goes in the next pass
                self._start_pass(queue)

    def close(self) -> None:
        """Stop the worker threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
