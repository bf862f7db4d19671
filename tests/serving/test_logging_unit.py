"""The server's log plumbing without a server: the background handler and the OpenMP default of `serve`."""

from __future__ import annotations

import io
import json
import logging
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
