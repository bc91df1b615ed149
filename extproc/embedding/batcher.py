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
from typing import Any, TypeVar

import numpy as np

from extproc.embedding.base import EncodeFn, TextRefused, TokenWindow, WordVectors, encodable
from extproc.embedding.cost import STALE, CostModel, WaitCorrection

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


T = TypeVar("T")


def _lower_priority() -> None:
    """Executor initializer: lower this worker thread's priority by :data:`WORKER_NICE`."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICE))
    except (AttributeError, OSError) as exc:  # not Linux, or a sandbox forbidding it: keep the default
        log.debug("embedding threads keep their priority: %s", exc)


async def at_worker_priority(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a fresh thread at the embedding workers' priority. A model session made
    there starts its own threads (ONNX Runtime's intra-op pool) at that priority too: they inherit
    it from the thread that creates them, and made elsewhere they ran at the loop's."""
    with ThreadPoolExecutor(1, thread_name_prefix="embed-setup", initializer=_lower_priority) as once:
        return await asyncio.get_running_loop().run_in_executor(once, fn, *args)


KEEP_WORDS = 256
"""Texts whose word vectors are kept from their sentence pass (the most recent first)."""
KEEP_WORDS_CHARS = 300
"""Only texts up to this long are kept (their token vectors are ~1.5 KB per token)."""


PROBE_SECONDS = 1.0
"""With a worker free and nothing queued, one lookup per this many seconds is admitted whatever
the prediction says: its pass is what corrects a prediction that sheds every lookup."""


OVERLAP_WEIGHT = 0.1
"""Weight of the newest pass in :attr:`Embedder.overlap` (about the last 10 passes)."""
SOLO_MAX_OVERLAP = 0.2
"""The solo encoder runs a pass only while fewer passes than this overlapped lately."""
LONE_WEIGHT = 0.2
"""Weight of the newest lone one-text pass in the moving means of each session's time."""
LONE_PROBE = 16
"""Every this many lone one-text passes, one runs on the session not preferred (kept measured)."""

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
        """The next batch: queued lookups first, stores only to fill it (texts whose waiter gave
        up are dropped on the way, so a run of them never hides the live ones behind)."""
        batch = _take_live(self.pending, limit)
        if len(batch) < limit:
            batch += _take_live(self.deferred, limit - len(batch))
        return batch


def _take_live(
    queue: list[tuple[str, asyncio.Future[Any]]], limit: int
) -> list[tuple[str, asyncio.Future[Any]]]:
    """Remove and return the first ``limit`` texts of ``queue`` still awaited (and the given-up
    ones before them)."""
    taken: list[tuple[str, asyncio.Future[Any]]] = []
    i = 0
    while i < len(queue) and len(taken) < limit:
        if not queue[i][1].done():
            taken.append(queue[i])
        i += 1
    del queue[:i]
    return taken


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
        self.lone: dict[bool, float] = {}
        """Moving mean of a lone one-text sentence pass's seconds, on the solo session (True) and
        on one thread (False): the solo one is used only while it is the faster."""
        self._lone_passes = 0
        self._last_pass = time.perf_counter()
        """When the last sentence pass ended (or the embedder started)."""
        self.batches = 0
        self.encoded = 0
        self.on_batch: Callable[[int], None] | None = None
        """Called with each forward pass's batch size (metrics)."""

    async def unreadable(self, text: str) -> tuple[str, ...] | None:
        """What the model cannot see of ``text`` (:meth:`TokenWindow.unreadable`; () when the
        tokenizer is unknown, as with a remote endpoint); None when tokenizing it failed."""
        window = self.window
        if window is None or window.unknown is None or text.isascii():
            return ()
        try:
            return await self._tokenizing(window.unreadable, text)
        except Exception:
            log.warning("tokenizing a prompt failed; it hits on exact repeats only", exc_info=True)
            return None

    async def _tokenizing(self, read: Callable[[str], T], text: str) -> T:
        """``read(text)`` (a tokenizer call of the window), on a thread past a few KB."""
        text = encodable(text)
        assert self.window is not None
        if self.window.must_count_off_loop(text):
            return await asyncio.to_thread(read, text)
        return read(text)

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
        try:
            return await self._tokenizing(window.fits, text)
        except Exception:  # what the model reads of it is unknown: never a semantic match
            log.warning("counting a prompt's tokens failed; it hits on exact repeats only", exc_info=True)
            return False

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

    def probe_due(self) -> bool:
        """True when a lookup should be admitted whatever the prediction: a worker is free,
        nothing waits, and no sentence pass has run for :data:`PROBE_SECONDS` (a prediction
        that sheds every lookup would otherwise never see a pass that corrects it)."""
        return self._idle_worker() and time.perf_counter() - self._last_pass >= PROBE_SECONDS

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
        text = encodable(text)
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
        text = encodable(text)
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
        """Embeddings of many texts, ``max_batch`` at a time, queued as stores are: behind every
        lookup, and seen by :meth:`expected_wait` (an import into a serving process, eval)."""
        loop = asyncio.get_running_loop()
        queue, out = self._sentences, []
        texts = [encodable(t) for t in texts]
        for i in range(0, len(texts), self.max_batch):
            futures = [loop.create_future() for _ in texts[i : i + self.max_batch]]
            queue.deferred.extend(zip(texts[i : i + self.max_batch], futures, strict=True))
            while len(queue.running) < self.workers and len(queue):
                self._start_pass(queue)
            out.append(np.stack(await asyncio.gather(*futures)))
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
        lone = solo is not None and queue is self._sentences and len(batch) == 1
        if lone and not self._prefer_solo():
            solo = None
        fn = solo or queue.fn
        slot = (len(batch), time.perf_counter())
        queue.running.append(slot)
        timed = (solo is not None) if lone else None
        task = asyncio.get_running_loop().create_task(self._pass(queue, fn, batch, slot, timed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _prefer_solo(self) -> bool:
        """Whether a lone one-text pass goes to the solo session: while it is measured the faster
        (on every core it waits for its slowest thread: with another process on one core, 2.8
        times one thread's time), every LONE_PROBE-th pass on the other to keep both known."""
        self._lone_passes += 1
        solo, one = self.lone.get(True), self.lone.get(False)
        best = solo is None or one is None or solo <= one
        return best != (self._lone_passes % LONE_PROBE == 0)

    async def _pass(
        self,
        queue: _Queue,
        fn: EncodePass,
        batch: list[tuple[str, asyncio.Future[Any]]],
        slot: Any,
        timed: bool | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, fn, [t for t, _ in batch])
        except asyncio.CancelledError:  # close(): the workers stopped; nobody waits for ever
            _fail(batch, RuntimeError("the embedding workers stopped"))
            raise
        except Exception as exc:  # every waiter of the batch gets the error
            _fail(batch, exc)
        else:
            if queue is self._sentences:
                took, predicted = time.perf_counter() - slot[1], self.cost.seconds(len(batch))
                if took * STALE < predicted:
                    self.cost.restart(len(batch), took)
                else:
                    self.cost.observe(len(batch), took)
                self._last_pass = time.perf_counter()
                if timed is not None:  # a lone one-text pass: which session is faster now
                    last = self.lone.get(timed, took)
                    self.lone[timed] = last + LONE_WEIGHT * (took - last)
                self.batches += 1
                self.encoded += len(batch)
                if self.on_batch is not None:
                    self.on_batch(len(batch))
            for (_, f), r in zip(batch, results, strict=True):
                if f.done():
                    continue
                if queue is self._sentences and not np.isfinite(r).all():
                    f.set_exception(TextRefused("the embedding model could not encode this text"))
                else:
                    f.set_result(r)
        finally:
            queue.running.remove(slot)
            if len(queue):  # what queued meanwhile goes in the next pass
                self._start_pass(queue)

    def close(self) -> None:
        """Stop the worker threads (what waits for a pass gets an error)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _fail(batch: list[tuple[str, asyncio.Future[Any]]], exc: BaseException) -> None:
    """Give every waiter of ``batch`` still waiting the error ``exc``."""
    for _, f in batch:
        if not f.done():
            f.set_exception(exc)
