"""Dynamic batching: concurrent requests of one kind become one model call.

Every request is an awaitable `submit(kind, payload)`. One collector task per kind takes the first
waiting payload, gathers whatever else arrives within `max_wait_s` (up to `max_batch`), and runs
`handler(payloads)` on the single model thread; each caller gets its own entry of the returned list.
While a batch runs, the next requests of that kind queue up and go out together as soon as the
thread is free, so batches grow with the load and a lone request waits at most `max_wait_s`.

The event loop never runs model code: it only moves payloads and futures. A handler may return an
exception instance as one entry (an unknown id in one request fails that request, not its batch).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Handler = Callable[[Sequence[Any]], Sequence[Any]]


class Overloaded(Exception):
    """The queue is full, or the answer did not come within the timeout (HTTP 503)."""


@dataclasses.dataclass
class BatchStats:
    """Counters for /health: model calls, requests they answered, the largest batch."""

    batches: int = 0
    requests: int = 0
    largest: int = 0

    def as_dict(self) -> dict:
        mean = self.requests / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "requests": self.requests,
            "largest_batch": self.largest,
            "mean_batch": round(mean, 2),
        }


class DynamicBatcher:
    """Gathers `submit` calls per kind into batched calls of that kind's handler on one thread.

    Args:
        handlers: kind -> function of a list of payloads returning one result per payload.
        max_wait_s: how long the first request of a batch waits for company (0: no waiting,
            but requests that queued while the thread was busy still go out together).
        max_batch: the most payloads per call (1 turns batching off).
        max_queue: the most requests waiting or running at once; more are refused (`Overloaded`).
        timeout_s: the longest a caller waits for its answer (`Overloaded` after it).
    """

    def __init__(
        self,
        handlers: dict[str, Handler],
        max_wait_s: float = 0.005,
        max_batch: int = 32,
        max_queue: int = 256,
        timeout_s: float = 30.0,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0 or timeout_s <= 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_s >= 0 and timeout_s > 0")
        self.handlers, self.max_wait_s, self.max_batch = handlers, max_wait_s, max_batch
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.pending = 0  # requests queued or in a running batch
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtrec-model")
        self._queues: dict[str, asyncio.Queue] = {}
        self._collectors: list[asyncio.Task] = []

    def start(self) -> None:
        """Start one collector per kind (call from inside the running event loop)."""
        for kind in self.handlers:
            self._queues[kind] = asyncio.Queue()
            self._collectors.append(asyncio.create_task(self._collect(kind), name=f"batch-{kind}"))

    async def stop(self) -> None:
        for task in self._collectors:
            task.cancel()
        await asyncio.gather(*self._collectors, return_exceptions=True)
        self._collectors.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def run_on_model_thread(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the model thread, between batches (e.g. a swap that must not race a batch)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def submit(self, kind: str, payload: Any) -> Any:
        """The handler's answer for `payload`; raises what the handler returned as an exception,
        or `Overloaded` when the queue is full or the timeout passes."""
        if self.pending >= self.max_queue:
            raise Overloaded(
                f"server busy: {self.pending} requests waiting (the limit is {self.max_queue}); retry later"
            )
        future = asyncio.get_running_loop().create_future()
        self.pending += 1
        await self._queues[kind].put((payload, future))
        try:
            result = await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            future.cancel()  # the collector skips it if it has not run yet
            raise Overloaded(f"no answer within {self.timeout_s:g} s; retry later") from None
        if isinstance(result, BaseException):
            raise result
        return result

    async def _collect(self, kind: str) -> None:
        queue, loop = self._queues[kind], asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            await self._run(kind, batch, loop)

    async def _run(self, kind: str, batch: list, loop: asyncio.AbstractEventLoop) -> None:
        live = [(p, f) for p, f in batch if not f.done()]  # timed-out callers are not computed
        self.pending -= len(batch) - len(live)
        if not live:
            return
        try:
            results = await loop.run_in_executor(self._executor, self.handlers[kind], [p for p, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"{kind} handler returned {len(results)} results for {len(live)} requests")
        except Exception as e:  # a failed batch fails each of its requests, never the collector
            results = [e] * len(live)
        self.pending -= len(live)
        self.stats.batches += 1
        self.stats.requests += len(live)
        self.stats.largest = max(self.stats.largest, len(live))
        for (_, future), result in zip(live, results):
            if not future.done():
                future.set_result(result)
