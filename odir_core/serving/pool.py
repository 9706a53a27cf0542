"""A bounded inference pool: ``workers`` threads run jobs, at most ``queue`` more wait; beyond that a job is
refused at once (the server answers 503 with Retry-After) instead of piling up memory and latency."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class PoolFull(Exception):
    """Every worker is busy and the queue is full."""


class InferencePool:
    """Runs blocking jobs (decode, preprocess, predict) on ``workers`` threads with at most ``queue`` waiting."""

    def __init__(self, workers: int = 1, queue: int = 8):
        if workers < 1 or queue < 0:
            raise ValueError(f"workers must be at least 1 and queue at least 0 (got {workers}, {queue})")
        self.workers, self.queue = workers, queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._lock = threading.Lock()
        self._held = 0  # jobs running or waiting
        self.refused = 0

    @property
    def capacity(self) -> int:
        """Jobs the pool holds at once, running and waiting."""
        return self.workers + self.queue

    def _release(self, _future=None) -> None:
        with self._lock:
            self._held -= 1

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        """``fn(*args)`` on a worker thread; PoolFull when the pool already holds ``capacity`` jobs."""
        with self._lock:
            if self._held >= self.capacity:
                self.refused += 1
                raise PoolFull(f"{self.workers} worker(s) busy and {self.queue} request(s) waiting")
            self._held += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Finish the running jobs and stop the threads."""
        self._executor.shutdown(wait=True, cancel_futures=True)
