"""The inference runtime on tiny local models: tasks, order, batching, truncation, loading, devices."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import pytest

from prodai_cli.errors import InvalidModelError, ModelNotFoundError, UsageError
from prodai_cli.runtime import ModelRuntime, load_runtime, plan_batches

TEXTS = [
    "hello world",
    "the movie was very good",
    "bad",
    "a great movie is not a terrible movie and the world is good " * 3,
    "hello",
    "not very good not very bad",
    "the the the the the the the the the the the the",
    "world",
]


@pytest.fixture(scope="module")
def classifier(tiny_classifier_dir: Path) -> ModelRuntime:
    return load_runtime(tiny_classifier_dir, device="cpu")


@pytest.fixture(scope="module")
def embedder(tiny_embedder_dir: Path) -> ModelRuntime:
    return load_runtime(tiny_embedder_dir, device="cpu")


def _reference_logits(model_dir: Path, text: str) -> list[float]:
    """One text through plain transformers, no batching: the ground truth for the runtime."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        logits = model(**tokenizer(text, return_tensors="pt", truncation=True)).logits[0]
    return [float(x) for x in logits.softmax(-1)]


def _reference_embedding(model_dir: Path, text: str) -> list[float]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        hidden = model(**tokenizer(text, return_tensors="pt", truncation=True)).last_hidden_state[0]
    vector = hidden.mean(dim=0)
    return [float(x) for x in vector / vector.norm()]


# ------------------------------------------------------------------------------------------ batching plan


def test_plan_batches_covers_every_index_once_longest_first_within_budget() -> None:
    lengths = [5, 40, 3, 40, 12, 7, 100, 1, 33, 12]
    batches = plan_batches(lengths, max_batch_tokens=80)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= 80 or len(batch) == 1
    assert batches[0] == [6]  # 100 tokens exceed the budget alone: a batch of one, not an error


def test_plan_batches_cuts_where_lengths_drop_once_a_batch_is_big_enough() -> None:
    lengths = [100, 98, 95, 60, 59, 58, 10, 10, 10]
    # Without the fill rule, one budget-bound batch pads 60- and 10-token inputs to 100.
    assert plan_batches(lengths, max_batch_tokens=10_000, min_fill=0) == [list(range(9))]
    assert plan_batches(lengths, max_batch_tokens=10_000, min_batch_tokens=150) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    # Below min_batch_tokens a batch takes anything.
    assert plan_batches(lengths, max_batch_tokens=10_000, min_batch_tokens=10_000) == [list(range(9))]


def test_plan_batches_by_count_and_ties_keep_input_order() -> None:
    batches = plan_batches([4, 4, 4, 4, 4], max_batch_size=2)
    assert batches == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="needs"):
        plan_batches([1, 2])


# ------------------------------------------------------------------------------------------ classification


def test_classification_matches_plain_transformers_in_input_order(
    classifier: ModelRuntime, tiny_classifier_dir: Path
) -> None:
    predictions = classifier.predict(TEXTS, max_batch_tokens=64)
    assert len(predictions) == len(TEXTS)
    for text, prediction in zip(TEXTS, predictions, strict=True):
        probs = _reference_logits(tiny_classifier_dir, text)
        best = max(range(len(probs)), key=probs.__getitem__)
        assert prediction["label"] == ["NEGATIVE", "POSITIVE"][best]
        assert prediction["confidence"] == pytest.approx(probs[best], abs=1e-5)
    assert classifier.task == "text-classification"
    assert classifier.version == "local"
    assert classifier.name == tiny_classifier_dir.name


def test_batch_composition_does_not_change_results(classifier: ModelRuntime) -> None:
    one_by_one = [classifier.predict([t])[0] for t in TEXTS]
    for budget in (16, 128, 100_000):
        together = classifier.predict(TEXTS, max_batch_tokens=budget)
        assert [p["label"] for p in together] == [p["label"] for p in one_by_one]
        for a, b in zip(together, one_by_one, strict=True):
            assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)


def test_predict_empty_list(classifier: ModelRuntime) -> None:
    assert classifier.predict([]) == []


# ------------------------------------------------------------------------------------------ embedding


def test_embedding_is_mean_pooled_unit_vector_matching_reference(
    embedder: ModelRuntime, tiny_embedder_dir: Path
) -> None:
    predictions = embedder.predict(TEXTS, max_batch_tokens=48)
    assert embedder.task == "embedding"
    for text, prediction in zip(TEXTS, predictions, strict=True):
        vector = prediction["embedding"]
        assert len(vector) == 32
        assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)
        reference = _reference_embedding(tiny_embedder_dir, text)
        assert sum(a * b for a, b in zip(vector, reference, strict=True)) > 0.99999


# ------------------------------------------------------------------------------------------ truncation


def test_token_lengths_include_special_tokens_and_cap_at_max_length(tiny_classifier_dir: Path) -> None:
    runtime = load_runtime(tiny_classifier_dir, device="cpu", max_length=8)
    assert runtime.max_length == 8
    lengths = runtime.token_lengths(["hello", "a b c d e f g h i j k l"])
    assert lengths == [3, 8]  # [CLS] hello [SEP]; the long one is cut to 8
    encoded = runtime.encode(["hello", "a b c d e f g h i j k l", "a b c d e f"])
    assert encoded.truncated == [False, True, False]
    assert len(runtime.predict(["a b c d e f g h i j k l " * 50])) == 1


def test_max_length_defaults_to_the_models_and_cannot_exceed_it(tiny_classifier_dir: Path) -> None:
    assert load_runtime(tiny_classifier_dir, device="cpu").max_length == 128
    assert load_runtime(tiny_classifier_dir, device="cpu", max_length=10_000).max_length == 128
    with pytest.raises(UsageError, match="at least 2"):
        load_runtime(tiny_classifier_dir, device="cpu", max_length=1)


# ------------------------------------------------------------------------------------------ loading


def test_load_registered_versions_by_alias_and_number(registered_copy: Path) -> None:
    settings = None  # the registered project is the working directory: settings load from there
    production = load_runtime("clf@production", settings, device="cpu")
    staging = load_runtime("models:/clf/2", settings, device="cpu")
    embedder = load_runtime("emb", settings, device="cpu")
    assert (production.name, production.version, production.task) == ("clf", "1", "text-classification")
    assert (staging.version, embedder.task, embedder.version) == ("2", "embedding", "1")
    a, b = production.predict(["hello world"])[0], staging.predict(["hello world"])[0]
    assert a["confidence"] != pytest.approx(b["confidence"], abs=1e-7)  # different weights, different answers
    # The downloaded MLflow directory (model/ + components/tokenizer/) also loads on its own.
    local = load_runtime(production.source.model_dir.parent, device="cpu")
    assert local.version == "local"
    assert local.predict(["hello world"])[0]["confidence"] == pytest.approx(a["confidence"], abs=1e-6)
    with pytest.raises(ModelNotFoundError):
        load_runtime("clf@nope", settings, device="cpu")


def test_directory_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match=r"neither config\.json"):
        load_runtime(tmp_path, device="cpu")
    with pytest.raises(UsageError, match="neither a model directory nor a model reference"):
        load_runtime("not a ref!", device="cpu")


# ------------------------------------------------------------------------------------------ devices


def test_device_and_precision_errors(tiny_classifier_dir: Path) -> None:
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        load_runtime(tiny_classifier_dir, device="cpu", precision="fp16")
    with pytest.raises(UsageError, match="Unknown device"):
        load_runtime(tiny_classifier_dir, device="tpu")
    with pytest.raises(UsageError, match="Unknown precision"):
        load_runtime(tiny_classifier_dir, device="cpu", precision="int3")


def test_cuda_request_without_gpu_is_a_usage_error(tiny_classifier_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the error path is for machines without one")
    with pytest.raises(UsageError, match="no CUDA GPU"):
        load_runtime(tiny_classifier_dir, device="cuda:0")
    assert load_runtime(tiny_classifier_dir, device="auto").device == "cpu"


def test_bf16_on_cpu_stays_close_to_fp32(tiny_embedder_dir: Path, embedder: ModelRuntime) -> None:
    bf16 = load_runtime(tiny_embedder_dir, device="cpu", precision="bf16")
    assert bf16.precision == "bf16"
    for a, b in zip(bf16.predict(TEXTS), embedder.predict(TEXTS), strict=True):
        assert sum(x * y for x, y in zip(a["embedding"], b["embedding"], strict=True)) > 0.99


# ------------------------------------------------------------------------------------------ concurrency, OOM


def test_predict_is_thread_safe(classifier: ModelRuntime) -> None:
    expected = classifier.predict(TEXTS)
    results: list[list[dict[str, Any]]] = []
    errors: list[BaseException] = []

    def worker(shift: int) -> None:
        try:
            texts = TEXTS[shift:] + TEXTS[:shift]
            for _ in range(5):
                got = classifier.predict(texts, max_batch_tokens=32)
                results.append(got[len(TEXTS) - shift :] + got[: len(TEXTS) - shift])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(shift,)) for shift in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert len(results) == 20
    for got in results:
        assert [p["label"] for p in got] == [p["label"] for p in expected]
        for a, b in zip(got, expected, strict=True):
            assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)


def test_out_of_memory_backs_off_fake_gpu(tiny_classifier_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake GPU that runs out of memory above 40 padded tokens: the runtime splits batches, still answers."""
    from prodai_cli.runtime import model as runtime_model

    runtime = load_runtime(tiny_classifier_dir, device="cpu")
    expected = runtime.predict(TEXTS)
    real_forward = runtime._forward
    seen: list[int] = []

    def small_gpu(rows: list[list[int]]) -> list[dict[str, Any]]:
        padded = len(rows) * max(len(r) for r in rows)
        seen.append(padded)
        if padded > 40 and len(rows) > 1:
            raise runtime_model._OutOfMemory("CUDA out of memory (fake)")
        return real_forward(rows)

    monkeypatch.setattr(runtime, "_forward", small_gpu)
    got = runtime.predict(TEXTS, max_batch_tokens=10_000)
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    assert [p["confidence"] for p in got] == pytest.approx([p["confidence"] for p in expected], abs=1e-5)
    assert runtime.oom_backoffs > 0
    assert runtime.max_batch_tokens < 10_000
    # Calibration treats an OOM as the ceiling and keeps the last budget that fit.
    seen.clear()
    assert runtime.calibrate(TEXTS, budgets=(16, 32, 64, 128)) in (16, 32)
    assert max(seen) > 40  # it did probe past the limit, and stopped there


def test_calibrate_picks_one_of_the_candidates(classifier: ModelRuntime) -> None:
    budget = classifier.calibrate(TEXTS * 8, budgets=(64, 256, 1024))
    assert budget in (64, 256, 1024)
    assert classifier.max_batch_tokens == budget
    assert classifier.describe()["max_batch_tokens"] == budget
