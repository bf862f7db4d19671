"""The ONNX Runtime backend and `prodai export`: equivalence with torch on real (tiny) models, and the refusals.

Exports are made once per session by the real CLI (`onnx_project` in tests/conftest.py); the figures the
export printed are checked here, then recomputed independently through the runtime the server uses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import build_tiny_model, run_cli
from onnx_helpers import train_probe_head

from prodai_cli.config import load_settings
from prodai_cli.errors import UsageError
from prodai_cli.export import sample_texts
from prodai_cli.registry import Registry
from prodai_cli.runtime import ModelRuntime, OnnxModelRuntime, load_runtime


def exports(root: Path) -> dict[str, Any]:
    data = json.loads((root / "exports.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def runtimes(root: Path, *refs: str) -> list[ModelRuntime]:
    import os

    cwd = os.getcwd()
    os.chdir(root)  # the registry is found from the working directory
    try:
        settings = load_settings()
        return [load_runtime(ref, settings, device="cpu") for ref in refs]
    finally:
        os.chdir(cwd)


# ------------------------------------------------------------------------------------------ export figures


def test_fp32_export_of_the_tiny_classifier_matches_torch_within_1e_4(onnx_project: Path) -> None:
    figures = exports(onnx_project)["clf/2"]
    assert figures["source"] == "clf/1"
    assert (figures["backend"], figures["precision"], figures["registered"]) == ("onnx", "fp32", True)
    equivalence = figures["equivalence"]
    assert equivalence["sample_size"] == 2000
    assert equivalence["max_abs_diff"] <= 1e-4
    assert equivalence["label_agreement"] == 1.0
    assert equivalence["passed"] is True


def test_int8_export_of_the_tiny_classifier_is_registered_with_its_figures(onnx_project: Path) -> None:
    # The tiny random head labels every sample text POSITIVE, so its 100% agreement proves little: the label
    # figure that means something is measured on all-MiniLM-L6-v2 under a trained head
    # (test_onnx_minilm.py), and a head whose labels int8 does flip is refused below.
    figures = exports(onnx_project)["clf/3"]
    assert (figures["precision"], figures["aliases"]) == ("int8", ["int8"])
    assert figures["equivalence"]["sample_size"] == 2000
    assert figures["equivalence"]["label_agreement"] >= 0.99
    assert 0 < figures["equivalence"]["max_abs_diff"] < 0.01  # int8 is not fp32: the weights did change


def test_embedder_exports_keep_the_embeddings(onnx_project: Path) -> None:
    fp32 = exports(onnx_project)["emb/2"]["equivalence"]
    assert fp32["max_abs_diff"] <= 1e-4
    assert fp32["min_cosine"] >= 0.9999
    int8 = exports(onnx_project)["emb/3"]["equivalence"]
    assert int8["precision"] == "int8"
    assert int8["mean_cosine"] >= 0.99
    assert int8["min_cosine"] >= 0.95


def test_the_figures_and_the_backend_are_version_tags(onnx_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(onnx_project)
    registry = Registry(load_settings())
    tags = registry.get_version("clf@int8").tags
    assert tags["prodai.runtime.backend"] == "onnx"
    assert tags["prodai.runtime.precision"] == "int8"
    assert tags["prodai.export.source"] == "clf/1"
    assert tags["prodai.export.sample_size"] == "2000"
    max_diff = exports(onnx_project)["clf/3"]["equivalence"]["max_abs_diff"]
    assert float(tags["prodai.export.max_abs_diff"]) == pytest.approx(max_diff, rel=1e-2)
    assert "prodai.runtime.backend" not in registry.get_version("clf/1").tags
    assert registry.get_version("clf/2").tags["prodai.runtime.precision"] == "fp32"
    emb = registry.get_version("emb/2").tags
    assert float(emb["prodai.export.min_cosine"]) >= 0.9999


def _graph_ops(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Op type counts of an ONNX graph, and the op type that reads each initializer."""
    import collections

    import onnx

    graph = onnx.load(str(path)).graph
    initializers = {i.name for i in graph.initializer}
    readers = {name: node.op_type for node in graph.node for name in node.input if name in initializers}
    return dict(collections.Counter(node.op_type for node in graph.node)), readers


def test_int8_quantizes_the_encoder_and_keeps_the_head_in_fp32(
    onnx_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    from prodai_cli.export import quantize_version

    monkeypatch.chdir(onnx_project)
    registry = Registry(load_settings())
    fp32_files, dynamic_files = registry.resolve("clf/2").path, registry.resolve("clf@int8").path
    fp32_ops, fp32_readers = _graph_ops(fp32_files / "model" / "model.onnx")
    # The tiny BERT: 2 layers x (query, key, value, attention output, intermediate, output) MatMuls; the
    # pooler and the classification head are Gemm (a linear layer on the 2-D CLS vector).
    assert fp32_ops["Gemm"] == 2
    assert fp32_readers["model.classifier.weight"] == fp32_readers["model.bert.pooler.dense.weight"] == "Gemm"

    # quantize_dynamic rewrites every Gemm as MatMul + Add (weight "<name>_Transposed"); the head's stay float.
    dynamic_ops, dynamic_readers = _graph_ops(dynamic_files / "model" / "model.onnx")
    assert dynamic_ops.get("MatMulInteger", 0) + dynamic_ops.get("DynamicQuantizeMatMul", 0) == 12
    head = {name: op for name, op in dynamic_readers.items() if "classifier" in name or "pooler" in name}
    assert head == {
        "model.classifier.weight_Transposed": "MatMul",
        "model.bert.pooler.dense.weight_Transposed": "MatMul",
    }

    blockwise = tmp_path / "blockwise"
    shutil.copytree(fp32_files, blockwise)
    quantize_version(blockwise / "model", "blockwise")
    info = json.loads((blockwise / "model" / "prodai_runtime.json").read_text(encoding="utf-8"))
    assert (info["precision"], info["int8_scheme"]) == ("int8", "blockwise")
    graph = onnx.load(str(blockwise / "model" / "model.onnx")).graph
    nbits = [node for node in graph.node if node.op_type == "MatMulNBits"]
    assert len(nbits) == 12
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert (attributes["bits"], attributes["block_size"], attributes["accuracy_level"]) == (8, 32, 4)
    _, blockwise_readers = _graph_ops(blockwise / "model" / "model.onnx")
    assert blockwise_readers["model.classifier.weight"] == "Gemm"
    runtime = load_runtime(blockwise, device="cpu")
    assert runtime.precision == "int8"
    torch_clf = load_runtime("clf/1", load_settings(), device="cpu")
    texts = sample_texts(64, seed=5)
    got, expected = runtime.predict(texts), torch_clf.predict(texts)
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(got, expected, strict=True)) < 1e-3


# ------------------------------------------------------------------------------------------ the runtime


def test_the_runtime_picks_the_backend_from_the_version_and_predicts_like_torch(onnx_project: Path) -> None:
    torch_clf, onnx_clf, int8_clf = runtimes(onnx_project, "clf@production", "clf/2", "clf@int8")
    assert type(torch_clf) is ModelRuntime
    assert isinstance(onnx_clf, OnnxModelRuntime) and isinstance(int8_clf, OnnxModelRuntime)
    assert (onnx_clf.precision, int8_clf.precision) == ("fp32", "int8")
    assert onnx_clf.describe()["backend"] == "onnx"
    assert onnx_clf.labels == torch_clf.labels == int8_clf.labels == ["NEGATIVE", "POSITIVE"]
    assert onnx_clf.max_length == torch_clf.max_length
    texts = sample_texts(300, seed=7)
    # Token-budget batches of any shape: the graph's batch and sequence axes are dynamic.
    expected = torch_clf.predict(texts, max_batch_tokens=512)
    got = onnx_clf.predict(texts, max_batch_tokens=2048)
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(got, expected, strict=True)) < 1e-5
    onnx_clf.scores = True
    scored = onnx_clf.predict(["good movie"])[0]
    assert scored["scores"][onnx_clf.labels.index(scored["label"])] == pytest.approx(scored["confidence"])


def test_onnx_embeddings_are_unit_vectors_close_to_torch(onnx_project: Path) -> None:
    torch_emb, onnx_emb = runtimes(onnx_project, "emb/1", "emb/2")
    assert isinstance(onnx_emb, OnnxModelRuntime) and onnx_emb.task == "embedding"
    texts = ["hello world", "", "the movie was very good " * 40]
    for mine, theirs in zip(onnx_emb.predict(texts), torch_emb.predict(texts), strict=True):
        assert sum(a * a for a in mine["embedding"]) == pytest.approx(1.0, abs=1e-5)
        assert sum(a * b for a, b in zip(mine["embedding"], theirs["embedding"], strict=True)) >= 0.9999


def test_an_onnx_version_refuses_a_torch_precision(onnx_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(onnx_project)
    with pytest.raises(UsageError, match=r"clf/2 is an ONNX version.*precision .bf16. applies to torch versions only"):
        load_runtime("clf/2", load_settings(), device="cpu", precision="bf16")


def test_a_tag_that_contradicts_the_files_is_refused(
    onnx_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prodai_cli.errors import InvalidModelError

    root = tmp_path / "proj"
    shutil.copytree(onnx_project, root)
    monkeypatch.chdir(root)
    settings = load_settings()
    Registry(settings).set_version_tags("clf", 1, {"prodai.runtime.backend": "onnx"})
    shutil.rmtree(root / ".prodai" / "models" / "clf" / "1")  # the cached sidecar holds the old tags
    message = r"tagged prodai\.runtime\.backend=onnx but its files are a torch model"
    with pytest.raises(InvalidModelError, match=message):
        load_runtime("clf/1", settings, device="cpu")


# ------------------------------------------------------------------------------------------ refusals


def test_int8_below_tolerance_is_refused_and_registers_nothing(tmp_path: Path) -> None:
    # A trained head over the tiny random encoder, whose pooled outputs barely differ between inputs: int8's
    # noise is as large as the differences the head reads, it flips about a quarter of the labels, and the
    # export must say so instead of registering the version.
    model = train_probe_head(build_tiny_model(tmp_path / "fragile", "text-classification", seed=0))
    root = tmp_path / "proj"
    root.mkdir()
    assert run_cli("register", str(model), "--name", "fragile", cwd=root).exit_code == 0
    result = run_cli("export", "fragile/1", "--to", "onnx", "--quantize", "int8", "--json", cwd=root)
    assert result.exit_code == 1, result.stderr
    # Both int8 schemes were tried, fastest first, and both are named with their figures.
    message = "The int8 ONNX export of fragile/1 differs from torch beyond tolerance: dynamic int8: labels agree on"
    assert message in result.stderr
    assert " | blockwise int8: labels agree on " in result.stderr
    assert "Nothing was registered" in result.stderr
    data = result.json()
    assert isinstance(data, dict)
    assert data["registered"] is False
    assert data["equivalence"]["label_agreement"] < 0.99
    assert data["equivalence"]["passed"] is False
    assert data["equivalence"]["int8_scheme"] == "blockwise"
    versions = run_cli("models", "list", "--json", cwd=root)
    assert '"latest_version": 1' in versions.stdout, versions.stdout


def test_export_refusals_name_the_problem(onnx_project: Path) -> None:
    again = run_cli("export", "clf/2", "--to", "onnx", cwd=onnx_project)
    assert again.exit_code == 2
    assert "clf/2 is already an onnx version; export its torch source instead" in again.stderr
    assert "Its source: clf/1" in again.stderr
    other = run_cli("export", "clf/1", "--to", "tflite", cwd=onnx_project)
    assert other.exit_code == 2
    assert "Unknown export format 'tflite'" in other.stderr
    quant = run_cli("export", "clf/1", "--quantize", "int4", cwd=onnx_project)
    assert quant.exit_code == 2
    assert "Unknown quantization 'int4'" in quant.stderr
