"""All model work of a server runs on one compute thread (one OpenMP team), loads on a thread that exits."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from typing import Any

import pytest

from prodai_cli.runtime import ModelRuntime
from prodai_cli.runtime.compute import compute_thread, run_in_fresh_thread
from prodai_cli.serving.batcher import MicroBatcher
from prodai_cli.serving.metrics import ServerMetrics
from prodai_cli.serving.pool import ModelPool


@pytest.fixture
def forward_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads that ran each real forward pass (the pass itself still runs)."""
    seen: list[str] = []
    original = ModelRuntime._forward

    def spy(self: ModelRuntime, rows: list[list[int]]) -> list[dict[str, Any]]:
        seen.append(threading.current_thread().name)
        return original(self, rows)

    monkeypatch.setattr(ModelRuntime, "_forward", spy)
    return seen


def test_two_models_load_on_exiting_threads_and_run_every_pass_on_the_compute_thread(
    tmp_path: Path,
    tiny_classifier_dir: Path,
    tiny_classifier_dir_b: Path,
    forward_threads: list[str],
    monkeypatch: pytest.MonkeyPatch,
    settings_for: Any,
) -> None:
    settings = settings_for(tmp_path)
    pool = ModelPool(settings, settings.config.serving, ServerMetrics())
    loaders: list[threading.Thread] = []
    original_load = ModelPool._load_runtime

    def spy_load(self: ModelPool, key: str) -> ModelRuntime:
        loaders.append(threading.current_thread())
        return original_load(self, key)

    monkeypatch.setattr(ModelPool, "_load_runtime", spy_load)

    async def scenario() -> list[list[dict[str, Any]]]:
        a = await pool.ensure(str(tiny_classifier_dir))
        b = await pool.ensure(str(tiny_classifier_dir_b))
        assert a.batcher is not None and b.batcher is not None
        jobs = [m.batcher.submit([f"text {i}"], timeout=30) for i in range(6) for m in (a, b)]  # type: ignore[union-attr]
        try:
            return list(await asyncio.gather(*jobs))
        finally:
            await pool.close(timeout=10)

    results = asyncio.run(scenario())
    assert [len(r) for r in results] == [1] * 12
    compute_name = compute_thread().submit(lambda: threading.current_thread().name).result(timeout=10)
    # Warm-up (one pass per model) and the 12 requests (at least one pass per model): all on one thread.
    assert len(forward_threads) >= 4
    assert set(forward_threads) == {compute_name}
    # Each model loaded on a thread of its own, which has exited (its OpenMP team with it).
    assert len(loaders) == 2 and all(t.name.startswith("prodai-loader") for t in loaders)
    assert not any(t.is_alive() for t in loaders)


def test_models_take_turns_on_the_compute_thread(runtime: ModelRuntime) -> None:
    compute = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    order: list[str] = []
    a = MicroBatcher(runtime, max_batch_tokens=4096, max_batch_size=1, compute=compute)
    b = MicroBatcher(runtime, max_batch_tokens=4096, max_batch_size=1, compute=compute)

    async def scenario() -> None:
        async def one(batcher: MicroBatcher, label: str) -> None:
            await batcher.submit([label], timeout=30)
            order.append(label)

        jobs = [asyncio.create_task(one(a, f"a{i}")) for i in range(4)]
        jobs.append(asyncio.create_task(one(b, "b0")))
        await asyncio.sleep(0)  # everything queued, nothing started
        a.start()  # round a0 is queued first...
        b.start()  # ...then b0; a's next round goes behind it
        await asyncio.gather(*jobs)

    try:
        asyncio.run(scenario())
    finally:
        a.stop(timeout=10)
        b.stop(timeout=10)
        compute.shutdown()
    # One text per round: b's only request is answered after a's first round, not after all four.
    assert order.index("b0") == 1, order
    assert sorted(order) == ["a0", "a1", "a2", "a3", "b0"]


@pytest.fixture(scope="module")
def runtime(tiny_classifier_dir: Path) -> ModelRuntime:
    from prodai_cli.runtime import load_runtime

    return load_runtime(tiny_classifier_dir)


def test_fresh_thread_result_comes_back_after_the_thread_has_exited() -> None:
    threads: list[threading.Thread] = []

    def work(x: int) -> int:
        threads.append(threading.current_thread())
        return x * 2

    assert asyncio.run(run_in_fresh_thread(work, 21)) == 42
    assert threads[0] is not threading.main_thread() and not threads[0].is_alive()

    def fail() -> None:
        raise RuntimeError("load failed")

    with pytest.raises(RuntimeError, match="load failed"):
        asyncio.run(run_in_fresh_thread(fail))
