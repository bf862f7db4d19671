"""The micro-batcher on a real tiny model: token budgets, order, backpressure, isolation of a bad input, stop."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from prodai_cli.serving.batcher import BatcherStopped, MicroBatcher, QueueFull
from prodai_cli.serving.errors import ModelError


@pytest.fixture(scope="module")
def runtime(tiny_classifier_dir: Path) -> Any:
    from prodai_cli.runtime import load_runtime

    return load_runtime(tiny_classifier_dir)


def _close(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return len(a) == len(b) and all(
        x["label"] == y["label"] and math.isclose(x["confidence"], y["confidence"], rel_tol=1e-5)
        for x, y in zip(a, b, strict=True)
    )


async def _submit_all(batcher: MicroBatcher, requests: list[list[str]], timeout: float = 30) -> list[Any]:
    return await asyncio.gather(*(batcher.submit(texts, timeout=timeout) for texts in requests), return_exceptions=True)


def test_forward_passes_respect_the_token_budget_and_answers_keep_order(runtime: Any) -> None:
    texts = [("good movie " * (1 + i % 4)).strip() for i in range(12)]
    lengths = runtime.token_lengths(texts)
    budget = 3 * max(lengths)  # at most 3 of the longest per pass
    batcher = MicroBatcher(runtime, max_batch_tokens=budget, max_batch_size=64, max_wait_ms=300)
    batcher.start()
    try:
        results = asyncio.run(_submit_all(batcher, [[t] for t in texts]))
    finally:
        batcher.stop(timeout=10)
    assert all(isinstance(r, list) for r in results), results
    assert _close([r[0] for r in results], runtime.predict(texts))
    assert batcher.stats.texts == 12
    assert batcher.stats.max_batch >= 2  # requests were gathered...
    assert batcher.stats.batches >= 4  # ...but 12 texts never fit one pass of a 3-long-text budget
    assert batcher.stats.max_batch * min(lengths) <= budget


def test_a_multi_text_request_gets_its_outputs_in_order(runtime: Any) -> None:
    batcher = MicroBatcher(runtime, max_batch_tokens=64, max_batch_size=4)
    batcher.start()
    texts = ["a", "the movie was very good and great " * 3, "bad", "hello world", "not very good", "x"]
    try:
        (result,) = asyncio.run(_submit_all(batcher, [texts]))
    finally:
        batcher.stop(timeout=10)
    assert _close(result, runtime.predict(texts))


def test_a_full_queue_refuses_at_once(runtime: Any) -> None:
    batcher = MicroBatcher(runtime, max_batch_tokens=4096, max_batch_size=8, max_queue=3)
    # Not started: nothing drains the queue, so the refusal is deterministic.

    async def scenario() -> tuple[list[Any], BaseException | None]:
        waiting = [asyncio.create_task(batcher.submit(["x"], timeout=30)) for _ in range(3)]
        await asyncio.sleep(0)
        refused: BaseException | None = None
        try:
            await batcher.submit(["one too many"], timeout=30)
        except QueueFull as exc:
            refused = exc
        assert batcher.queued_texts == 3
        batcher.start()
        return list(await asyncio.gather(*waiting)), refused

    results, refused = asyncio.run(scenario())
    batcher.stop(timeout=10)
    assert isinstance(refused, QueueFull) and refused.headers["Retry-After"] == "1"
    assert [len(r) for r in results] == [1, 1, 1]


def test_an_input_that_breaks_the_model_fails_only_its_own_request(runtime: Any) -> None:
    batcher = MicroBatcher(runtime, max_batch_tokens=4096, max_batch_size=8, max_wait_ms=200)
    batcher.start()
    try:
        # A lone surrogate cannot be tokenized; validation normally stops it before the batcher.
        results = asyncio.run(_submit_all(batcher, [["fine"], ["bad \ud800"], ["also fine"]]))
    finally:
        batcher.stop(timeout=10)
    assert _close(results[0], runtime.predict(["fine"]))
    assert isinstance(results[1], ModelError) and results[1].model_version == "local"
    assert _close(results[2], runtime.predict(["also fine"]))
    assert batcher.stats.errors == 1


def test_stop_finishes_queued_work_then_refuses(runtime: Any) -> None:
    batcher = MicroBatcher(runtime, max_batch_tokens=4096, max_batch_size=2)

    async def scenario() -> tuple[list[Any], BaseException | None]:
        waiting = [asyncio.create_task(batcher.submit([f"text {i}"], timeout=30)) for i in range(6)]
        await asyncio.sleep(0)
        batcher.start()
        await asyncio.to_thread(batcher.stop, 30)
        late: BaseException | None = None
        try:
            await batcher.submit(["late"], timeout=5)
        except BatcherStopped as exc:
            late = exc
        return list(await asyncio.gather(*waiting)), late

    results, late = asyncio.run(scenario())
    assert [len(r) for r in results] == [1] * 6
    assert isinstance(late, BatcherStopped)


def test_forward_pass_plan_splits_mixed_lengths_where_padding_outweighs_a_pass() -> None:
    import random

    from prodai_cli.serving.batcher import plan_forward_passes

    rng = random.Random(0)
    lengths = [rng.randint(7, 80) for _ in range(48)]
    passes = plan_forward_passes(lengths, max_batch_tokens=4096, max_batch_size=64, overhead_tokens=32)
    assert sorted(i for p in passes for i in p) == list(range(48))
    cost = sum(32 + len(p) * max(lengths[i] for i in p) for p in passes)
    one_pass = 32 + 48 * max(lengths)
    singles = sum(32 + n for n in lengths)
    assert cost < one_pass and cost < singles
    assert 1 < len(passes) < 48
    # Shortest texts first, so most requests are answered after the first pass.
    longest = [max(lengths[i] for i in p) for p in passes]
    assert longest == sorted(longest)


def test_forward_pass_plan_respects_budget_and_size_cap() -> None:
    from prodai_cli.serving.batcher import plan_forward_passes

    lengths = [30] * 10 + [200]
    passes = plan_forward_passes(lengths, max_batch_tokens=100, max_batch_size=2, overhead_tokens=1000)
    assert sorted(i for p in passes for i in p) == list(range(11))
    for p in passes:
        assert len(p) <= 2
        assert len(p) == 1 or len(p) * max(lengths[i] for i in p) <= 100
    assert [10] in passes  # a text over the budget still gets a pass of its own
    # Equal lengths and a big pass overhead: as few passes as the caps allow.
    assert len(plan_forward_passes([16] * 64, max_batch_tokens=4096, max_batch_size=64, overhead_tokens=32)) == 1
