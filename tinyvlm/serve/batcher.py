"""The dynamic batcher: one worker thread owns the model, and the requests waiting when it is free
are decoded together, in one `TinyVLM.stream_chat` over all their rows.

A request is a `Job`: its conversation, pictures and sampling settings, and the asyncio queue of
the event loop that waits for it. The worker takes the oldest job and every other waiting job
that samples the same way (up to `max_batch`), decodes them as one batch, and hands each row's
`Delta`s to its own job's queue as they come, without ever waiting for a client: a slow reader only
lets its own queue grow, bounded by its own max_new_tokens. Rows may ask for different token
budgets: the batch runs to the largest, and a row that reaches its own ends there ('length').
A job that is cancelled (its client left, timed out, or hit a stop string) gets nothing more; the
batch stops decoding as soon as every row is cancelled or finished.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..api import Delta, TinyVLM
from ..errors import TinyVLMError
from ..generate import Sampling

log = logging.getLogger("tinyvlm.serve")


class QueueFull(Exception):
    """The server has `max_queue` requests waiting already: the client should retry later."""


@dataclass(eq=False)
class Job:
    """One request's rows of work. `events` receives its Deltas, then possibly an exception (the
    decode failed); the Delta that carries a `finish` is its last."""
    turns: list[tuple[str, str]]
    pictures: list[Any]
    sampling: Sampling
    prefix: str = ""
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set from the event loop, read by the worker: a plain bool is enough

    def cancel(self) -> None:
        self.cancelled = True

    def send(self, item: Delta | Exception) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


def batch_key(s: Sampling) -> tuple | None:
    """Jobs with equal keys can share a batch: the same settings but for the token budget. None: a
    seeded sampled job decodes alone, so that its seed alone decides its text."""
    if s.temperature > 0 and s.seed is not None:
        return None
    return tuple(sorted((k, v) for k, v in asdict(s).items() if k != "max_new_tokens"))


class Batcher:
    """Owns `vlm` on one worker thread. `submit` raises QueueFull when `max_queue` jobs wait.
    `gather_s`: how long the worker waits, once a job is there, for others arriving with it."""

    def __init__(self, vlm: TinyVLM, max_batch: int = 8, max_queue: int = 64, gather_s: float = 0.005):
        self.vlm, self.max_batch, self.max_queue, self.gather_s = vlm, max_batch, max_queue, gather_s
        self._waiting: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = {"batches": 0, "rows": 0, "largest_batch": 0, "stopped_early": 0}

    # --- the event loop's side -----------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="tinyvlm-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self._cv:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are waiting already")
            self._waiting.append(job)
            self._cv.notify()

    def waiting(self) -> int:
        return len(self._waiting)

    # --- the worker's side -----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if jobs:
                self._decode(jobs)

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest job and the waiting jobs that sample as it does (None: stop)."""
        with self._cv:
            self._cv.wait_for(lambda: self._waiting or self._stopping)
            if self._stopping:
                return None
            if self.gather_s and len(self._waiting) < self.max_batch:
                self._cv.wait_for(lambda: len(self._waiting) >= self.max_batch or self._stopping, self.gather_s)
            first = self._waiting.popleft()
            key = batch_key(first.sampling)
            alike = [j for j in self._waiting if key is not None and batch_key(j.sampling) == key]
            jobs = [first] + alike[: self.max_batch - 1]
            for j in jobs[1:]:
                self._waiting.remove(j)
        return [j for j in jobs if not j.cancelled]

    def _decode(self, jobs: list[Job]) -> None:
        self.stats["batches"] += 1
        self.stats["rows"] += len(jobs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        budget = [j.sampling.max_new_tokens for j in jobs]
        sampling = replace(jobs[0].sampling, max_new_tokens=max(budget))
        written = [0] * len(jobs)
        open_ = [True] * len(jobs)
        deltas = None
        try:
            deltas = self.vlm.stream_chat([j.turns for j in jobs], [j.pictures for j in jobs],
                                          [j.prefix for j in jobs], sampling)
            for d in deltas:
                row = d.row
                if not open_[row]:
                    continue
                written[row] += 1
                if jobs[row].cancelled:
                    open_[row] = False
                else:
                    if d.finish is None and written[row] >= budget[row]:
                        d = d._replace(finish="length")
                    jobs[row].send(d)
                    open_[row] = d.finish is None
                if not any(o and not j.cancelled for o, j in zip(open_, jobs)):
                    if any(j.cancelled for j in jobs):  # not every row ran to its end
                        self.stats["stopped_early"] += 1
                    break
        except TinyVLMError as e:
            self._fail(jobs, open_, e)
        except Exception as e:  # noqa: BLE001 - one bad batch must not end the worker
            log.exception("decoding a batch of %d failed", len(jobs))
            self._fail(jobs, open_, e)
        finally:
            if deltas is not None:
                deltas.close()
        self._fail(jobs, open_, RuntimeError("the decoder ended without finishing this row"))

    @staticmethod
    def _fail(jobs: list[Job], open_: list[bool], error: Exception) -> None:
        for row, job in enumerate(jobs):
            if open_[row] and not job.cancelled:
                job.send(error)
            open_[row] = False
