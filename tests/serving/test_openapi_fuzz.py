"""A schemathesis fuzz of the server's own OpenAPI document, against a real uvicorn server on loopback.

Bodies that fit the spec and bodies that break it are generated for every operation; no answer may be a 5xx,
every answer must pass schemathesis' checks (documented status codes, content types, response schemas), and
every schema-violating prediction request must be refused with a 4xx.
Bounded: a few dozen examples per mode.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(fuzz_server: Any, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    seen: dict[int, int] = {}

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: Any) -> None:
        response = case.call(timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.method, case.path, case.body, response.text)
        # schemathesis' own rejection check does not count 413 as a rejection; ours below does.
        case.validate_response(response, excluded_checks=[negative_data_rejection])
        if mode is GenerationMode.NEGATIVE and case.method == "POST":
            assert 400 <= response.status_code < 500, (case.path, case.body, response.status_code)

    fuzz()
    assert sum(seen.values()) >= 100
    if mode is GenerationMode.POSITIVE:
        assert 200 in seen, seen
    else:
        assert any(400 <= status < 500 for status in seen), seen
