"""The server runs a torch model as a checked TorchScript trace (serving.trace), made at its first start.

A trace runs each forward pass as one call that releases Python's GIL (docs/performance.md has the
measurements); what must hold is that it answers exactly what the model itself answers, that a later start
loads the stored trace instead of tracing again, and that a trace the server cannot use (refused before,
``serving.trace: false``) leaves it serving the model itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import assert_same_predictions

from prodai_cli.runtime.traced import TracedModel

TEXTS = ["great", "a terrible, boring film " * 3, "fine " * 40, "the acting was good but the plot was not " * 9]


def predictions(url: str) -> list[dict[str, Any]]:
    response = httpx.post(f"{url}/predict/batch", json={"texts": TEXTS}, timeout=30)
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def served_runtime(server: Any) -> Any:
    (entry,) = server.state.pool.entries()
    return entry.runtime


def traces(root: Path) -> list[Path]:
    return sorted((root / ".prodai" / "traces").glob("*.pt"))


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(TEXTS)
    assert_same_predictions(got, want)


@pytest.mark.parametrize("which", ["tiny_classifier_dir", "tiny_embedder_dir"])
def test_a_server_traces_its_model_once_and_answers_what_the_model_answers(
    tmp_path: Path, thread_server: Any, settings_for: Any, which: str, request: pytest.FixtureRequest
) -> None:
    model_dir: Path = request.getfixturevalue(which)
    eager = thread_server(settings_for(tmp_path / "eager", trace=False), str(model_dir))
    assert served_runtime(eager).trace_state == "off"
    assert not traces(tmp_path / "eager")
    want = predictions(eager.url)

    first = thread_server(settings_for(tmp_path / "traced"), str(model_dir))
    runtime = served_runtime(first)
    assert runtime.trace_state == "traced"
    assert isinstance(runtime.model, TracedModel)
    (stored,) = traces(tmp_path / "traced")
    assert_same(predictions(first.url), want)
    first.stop()

    # A restart (or another worker) loads the stored trace: nothing is traced or written again (a new trace
    # would be a new file renamed into place, so a new inode).
    made = stored.stat().st_ino, stored.with_suffix(".json").stat().st_ino
    second = thread_server(settings_for(tmp_path / "traced"), str(model_dir))
    assert served_runtime(second).trace_state == "traced"
    assert traces(tmp_path / "traced") == [stored]
    assert (stored.stat().st_ino, stored.with_suffix(".json").stat().st_ino) == made
    assert json.loads(stored.with_suffix(".json").read_text(encoding="utf-8"))["status"] == "ok"
    assert_same(predictions(second.url), want)


def test_a_trace_refused_before_leaves_the_server_on_the_model_itself(
    tmp_path: Path, thread_server: Any, settings_for: Any, tiny_classifier_dir: Path
) -> None:
    first = thread_server(settings_for(tmp_path), str(tiny_classifier_dir))
    want = predictions(first.url)
    first.stop()
    (stored,) = traces(tmp_path)
    # What a trace that did not reproduce the model leaves behind: a marker and no trace file.
    stored.unlink()
    stored.with_suffix(".json").write_text(json.dumps({"format": 1, "status": "refused"}), encoding="utf-8")

    second = thread_server(settings_for(tmp_path), str(tiny_classifier_dir))
    runtime = served_runtime(second)
    assert runtime.trace_state == "eager"
    assert not isinstance(runtime.model, TracedModel)
    assert not traces(tmp_path)  # not traced again either
    assert_same(predictions(second.url), want)
