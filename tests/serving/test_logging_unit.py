"""The server's log plumbing without a server: the background handler and the OpenMP default of `serve`."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from prodai_cli.serving.logging import BackgroundHandler, JsonFormatter


def test_background_handler_writes_every_record_in_order_and_close_drains_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    handler = BackgroundHandler()
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("prodai.test.background")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        for i in range(2000):
            log.info("request", extra={"n": i})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        handler.close()  # must write what is still queued before it returns
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines[:-1]] == list(range(2000))
    assert lines[-1]["msg"] == "failed" and lines[-1]["error"] == "ValueError: boom"
    assert not handler.listener._thread  # the writer thread is gone


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, "10000"), ({"GOMP_SPINCOUNT": "5"}, "5"), ({"OMP_WAIT_POLICY": "PASSIVE"}, None)],
)
def test_serve_shortens_openmp_spin_unless_the_user_chose(env: dict[str, str], expected: str | None) -> None:
    code = (
        "import os; from prodai_cli.serving.server import tune_openmp_for_serving; tune_openmp_for_serving(); "
        "print(os.environ.get('GOMP_SPINCOUNT'))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)
