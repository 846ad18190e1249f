"""Concurrent requests gathered into batches for the one decoder (`tuneloop.decoding.engine.Engine`).

```
requests ──▶ BatchingGenerator (one worker thread) ──▶ Engine.run(batch)
              waits a few ms to gather up to
              max_batch concurrent requests
```
The queue is bounded: `submit` raises `QueueFull` instead of letting waiting requests pile up without limit.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time

from tuneloop.decoding.engine import Engine, GenerationRequest, PreparedRow


class QueueFull(RuntimeError):
    """More requests are waiting than the server queues; the client should retry later."""


class BatchingGenerator:
    """One worker thread that gathers concurrent requests into batches for an Engine."""

    def __init__(self, engine: Engine, max_batch: int = 8, wait_s: float = 0.005, max_queue: int = 64):
        self.engine = engine
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_queue = max_queue
        self._queue: queue.Queue[tuple[GenerationRequest | PreparedRow, concurrent.futures.Future] | None] = queue.Queue()
        self._waiting = threading.BoundedSemaphore(max_queue)
        self._thread = threading.Thread(target=self._work, name="tuneloop-batcher", daemon=True)
        self.batches = 0
        self.largest_batch = 0
        self._thread.start()

    def submit(self, request: GenerationRequest | PreparedRow) -> concurrent.futures.Future:
        """Queue a request (or a row from `Engine.prepare`); QueueFull when `max_queue` are already waiting."""
        if not self._waiting.acquire(blocking=False):
            raise QueueFull(f"{self.max_queue} requests are already waiting")
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.add_done_callback(lambda _: self._waiting.release())
        self._queue.put((request, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            rows, futures = [], []
            for request, future in batch:
                try:  # a request that cannot be prepared fails alone, never its batch
                    rows.append(request if isinstance(request, PreparedRow) else self.engine.prepare(request))
                    futures.append(future)
                except Exception as err:
                    future.set_exception(err)
            if not rows:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(rows))
            try:
                results = self.engine.run(rows)
            except Exception as err:  # a failed batch fails its requests, never the worker
                for future in futures:
                    future.set_exception(err)
                continue
            for future, result in zip(futures, results):
                future.set_result(result)
