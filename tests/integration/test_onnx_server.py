"""ONNX versions behind a real `prodai serve` (A/B split torch vs int8) and in a real `prodai batch` job."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli

from prodai_cli.config import load_settings
from prodai_cli.export import sample_texts
from prodai_cli.runtime import load_runtime

AB_TORCH_VS_INT8 = """\
auth:
  enabled: false
rate_limit:
  enabled: false
ab:
  enabled: true
  model: clf
  variants:
    torch: {version: 1, weight: 0.5}
    int8: {version: 3, weight: 0.5}
"""


def predictions(root: Path, ref: str, texts: list[str], *, one_by_one: bool = False) -> list[dict[str, Any]]:
    """What the version predicts in this process (the export's own runtime), for comparison.

    ``one_by_one`` predicts each text alone: int8 graphs quantize activations per call, over the whole batch,
    so an int8 answer is reproducible only for the same batch (here: a batch of one, as a server sends it
    when requests arrive one at a time).
    """
    cwd = os.getcwd()
    os.chdir(root)
    try:
        runtime = load_runtime(ref, load_settings(), device="cpu")
        if one_by_one:
            return [runtime.predict([text])[0] for text in texts]
        return runtime.predict(texts)
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_an_ab_split_between_torch_and_the_int8_export_serves_each_versions_own_answers(
    onnx_project: Path, tmp_path: Path, kit: Any, servers: list[Any]
) -> None:
    root = kit.make_project(onnx_project, tmp_path / "proj", kit.BASE_CONFIG + AB_TORCH_VS_INT8)
    server = kit.Server(root)
    servers.append(server)
    kit.start_all(server)
    health = server.health()
    assert {name: v["version"] for name, v in health["ab"]["variants"].items()} == {"torch": 1, "int8": 3}
    texts = [t for t in sample_texts(120, seed=5) if t.strip()]  # the server refuses empty texts (422)
    calls = [kit.Call({"text": text}, {"X-User-ID": f"user-{i}"}) for i, text in enumerate(texts)]
    answers = kit.send_all(server.port, calls, concurrency=1)  # one request per forward pass (see predictions)
    assert [a.status for a in answers] == [200] * len(texts), [a.body[:200] for a in answers if a.status != 200][:3]
    expected = {"1": predictions(root, "clf/1", texts), "3": predictions(root, "clf/3", texts, one_by_one=True)}
    seen = {"1": 0, "3": 0}
    for i, answer in enumerate(answers):
        data = answer.json()
        version = data["model_version"]
        assert (data["variant"], version) in {("torch", "1"), ("int8", "3")}
        assert answer.headers["x-model-version"] == version
        assert data["label"] == expected[version][i]["label"], (texts[i], version)
        assert data["confidence"] == pytest.approx(expected[version][i]["confidence"], abs=1e-6)
        seen[version] += 1
    assert seen["1"] > 20 and seen["3"] > 20, seen
    # The two versions' confidences differ (int8 moved the encoder's weights), so the answers tell which one ran;
    # by little on this tiny model: its head stays fp32 and its logits move by ~1e-5, its confidences by less.
    moved = [abs(a["confidence"] - b["confidence"]) for a, b in zip(expected["1"], expected["3"], strict=True)]
    assert max(moved) > 1e-7, max(moved)


def batch_labels(root: Path, ref: str, source: Path) -> list[str]:
    out = root / f"out-{ref.replace('/', '-')}.jsonl"
    result = run_cli("batch", str(source), "--model", ref, "--output", str(out), "--json", cwd=root)
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert isinstance(summary, dict)
    assert (summary["model_version"], summary["errors"]) == (ref.split("/")[1], 0), summary
    return [json.loads(line)["label"] for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_batch_on_onnx_versions_gives_the_labels_of_torch(onnx_project: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "proj"
    shutil.copytree(onnx_project, root)
    texts = [t for t in sample_texts(400, seed=9) if t.strip()]  # an empty text is a bad line, not an input
    source = root / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    # fp32: the very labels of torch.
    fp32 = batch_labels(root, "clf/2", source)
    assert len(fp32) == len(texts)
    assert fp32 == batch_labels(root, "clf/1", source)
    # int8: the export's own labels, batched by the job as the runtime batches them in this process.
    assert batch_labels(root, "clf/3", source) == [p["label"] for p in predictions(root, "clf/3", texts)]
