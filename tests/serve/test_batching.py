"""The dynamic batcher alone (no model, no sockets): gathering, limits, timeouts, failures."""

import asyncio
import threading
import time

import pytest

from mtrec.serve.batching import DynamicBatcher, Overloaded


def _run(coro):
    return asyncio.run(coro)


async def _with(batcher: DynamicBatcher, body):
    batcher.start()
    try:
        return await body()
    finally:
        await batcher.stop()


def test_concurrent_calls_become_one_call_and_get_their_own_answers():
    calls, threads = [], set()

    def double(xs):
        calls.append(list(xs))
        threads.add(threading.current_thread().name)
        return [2 * x for x in xs]

    batcher = DynamicBatcher({"double": double}, max_wait_s=0.05)
    answers = _run(_with(batcher, lambda: asyncio.gather(*(batcher.submit("double", x) for x in range(10)))))
    assert answers == [2 * x for x in range(10)]
    assert calls == [list(range(10))]
    assert threads == {"mtrec-model_0"} and threading.current_thread().name not in threads
    assert batcher.stats.as_dict() == {"batches": 1, "requests": 10, "largest_batch": 10, "mean_batch": 10.0}
    assert batcher.pending == 0


def test_max_batch_caps_each_call_and_kinds_are_batched_apart():
    sizes = {"a": [], "b": []}

    def handler(kind):
        return lambda xs: sizes[kind].append(len(xs)) or [kind] * len(xs)

    batcher = DynamicBatcher({"a": handler("a"), "b": handler("b")}, max_wait_s=0.05, max_batch=3)

    async def body():
        return await asyncio.gather(*(batcher.submit("a" if n % 2 else "b", n) for n in range(14)))

    answers = _run(_with(batcher, body))
    assert answers == ["a" if n % 2 else "b" for n in range(14)]
    assert sizes == {"a": [3, 3, 1], "b": [3, 3, 1]}


def test_an_exception_entry_fails_only_its_request_and_a_crash_fails_the_batch_not_the_server():
    def picky(xs):
        if "boom" in xs:
            raise RuntimeError("handler bug")
        return [ValueError(f"bad {x}") if x < 0 else x for x in xs]

    batcher = DynamicBatcher({"k": picky}, max_wait_s=0.02)

    async def body():
        mixed = await asyncio.gather(*(batcher.submit("k", x) for x in (1, -1, 2)), return_exceptions=True)
        crashed = await asyncio.gather(batcher.submit("k", "boom"), return_exceptions=True)
        return mixed, crashed, await batcher.submit("k", 5)

    mixed, crashed, after = _run(_with(batcher, body))
    assert mixed[0] == 1 and mixed[2] == 2 and isinstance(mixed[1], ValueError) and str(mixed[1]) == "bad -1"
    assert isinstance(crashed[0], RuntimeError)
    assert after == 5


def test_a_full_queue_and_a_timeout_answer_overloaded():
    computed = []

    def slow(xs):
        time.sleep(0.3)
        computed.extend(xs)
        return xs

    batcher = DynamicBatcher({"k": slow}, max_wait_s=0, max_batch=1, max_queue=2, timeout_s=0.1)

    async def body():
        results = await asyncio.gather(*(batcher.submit("k", x) for x in range(3)), return_exceptions=True)
        await asyncio.sleep(0.5)  # the first call finishes on the model thread; the second never runs
        return results

    results = _run(_with(batcher, body))
    assert all(isinstance(r, Overloaded) for r in results)
    assert "limit is 2" in str(results[2]) and "within 0.1 s" in str(results[0])
    assert computed == [0]  # the timed-out request still waiting was skipped
    assert batcher.pending == 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher({}, max_batch=0)
