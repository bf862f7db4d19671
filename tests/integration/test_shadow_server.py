"""Issue 21 (shadow traffic) against real `prodai serve` processes: `spread` v1 (production) answers every
request while v2 runs a copy (two tiny classifiers whose labels follow the text, built to disagree on some
texts); clients see only v1, the agreement series match the share of texts on which the two
models agree (computed here with the runtime), copies cost no rate-limit tokens and are never cached, a
config reload turns shadowing off, and a slow shadow is shed (counted) while every client is answered.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import VOCAB, build_tiny_model, run_cli

from prodai_cli.config import load_settings
from prodai_cli.runtime import load_runtime

pytestmark = pytest.mark.slow

SHADOWED = """\
auth:
  enabled: false
rate_limit:
  enabled: false
ab:
  enabled: true
  model: spread
  variants:
    production: {version: 1, weight: 1.0, alias: production}
  shadow:
    enabled: true
    version: 2
    sample: 100%
"""
_WORDS = [token for token in VOCAB if not token.startswith("[")]
_RNG = random.Random(7)
TEXTS = [" ".join(_RNG.choice(_WORDS) for _ in range(_RNG.randint(2, 16))) for _ in range(40)]


@pytest.fixture(scope="module")
def spread_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("spread")
    return (
        build_tiny_model(root / "v1", seed=3, head_gain=1e4),
        build_tiny_model(root / "v2", seed=4, head_gain=1e4),
    )


@pytest.fixture(scope="module")
def spread_project(
    registered_project: Path, tmp_path_factory: pytest.TempPathFactory, spread_models: tuple[Path, Path]
) -> Path:
    """The registered project plus `spread` v1 (alias production) and v2."""
    root = tmp_path_factory.mktemp("spread-project") / "proj"
    shutil.copytree(registered_project, root, symlinks=True)
    for directory, alias in zip(spread_models, ("production", "staging"), strict=True):
        result = run_cli("register", str(directory), "--name", "spread", "--alias", alias, cwd=root)
        assert result.exit_code == 0, result.stderr
    return root


def shadow_counts(server: Any) -> tuple[float, float]:
    """(texts compared, summed agreement) so far."""
    return (
        server.metric("prodai_shadow_compared_total", variant="production", shadow="v2"),
        server.metric("prodai_shadow_agreement_total", variant="production", shadow="v2"),
    )


def test_shadow_at_100_percent_is_invisible_to_clients_and_measures_agreement_then_turns_off_on_reload(
    spread_project: Path, tmp_path: Path, kit: Any, servers: list[Any], spread_models: tuple[Path, Path]
) -> None:
    project = kit.make_project(spread_project, tmp_path / "proj", kit.BASE_CONFIG + SHADOWED)
    server = kit.Server(project)
    servers.append(server)
    kit.start_all(server)
    assert server.health()["ab"]["shadow"] == {"version": 2, "sample": 1.0, "max_pending": 64}
    # Ground truth: the two versions' labels, computed here without the server.
    v1, v2 = ([o["label"] for o in load_runtime(d, device="cpu").predict(TEXTS)] for d in spread_models)
    agreeing = sum(a == b for a, b in zip(v1, v2, strict=True))
    assert 0 < agreeing < len(TEXTS), "the two test models must disagree on some texts and agree on others"

    answers = kit.send_all(server.port, [kit.Call({"text": t}) for t in TEXTS], concurrency=1)
    assert [a.status for a in answers] == [200] * len(TEXTS)
    assert [a.json()["label"] for a in answers] == v1  # the client gets the primary's answers only
    assert {(a.json()["model_version"], a.json()["variant"]) for a in answers} == {("1", "production")}
    assert not any("x-fallback" in a.headers for a in answers)
    compared, agreed = kit.wait_until(
        lambda: (c := shadow_counts(server))[0] >= len(TEXTS) and c, 60, what="every copy compared"
    )
    assert compared == len(TEXTS)
    assert agreed == agreeing  # the agreement series is exactly the share the two models agree on
    assert server.metric("prodai_shadow_latency_seconds_count", side="shadow", shadow="v2") == len(TEXTS)
    assert server.metric("prodai_shadow_errors_total") == 0
    # Never cached under the primary's key: repeating a text is a hit with v1's answer, not v2's.
    disagree = next(i for i, (a, b) in enumerate(zip(v1, v2, strict=True)) if a != b)
    again = kit.send_all(server.port, [kit.Call({"text": TEXTS[disagree]})], concurrency=1)[0]
    assert again.headers.get("x-cache") == "HIT"
    assert (again.json()["label"], again.json()["model_version"]) == (v1[disagree], "1")
    # ab-show prints the live comparison.
    shown = run_cli("--json", "ab-show", "--url", server.url, cwd=project)
    assert shown.exit_code == 0, shown.stderr
    live = json.loads(shown.stdout)["shadow"]["live"]
    assert live["compared"] >= len(TEXTS) and live["by_variant"]["production"]["compared"] >= len(TEXTS)

    # Off by a config reload (ab-shadow --off edits prodai.yaml; the server follows without a restart).
    loaded = server.metric("prodai_config_reload_timestamp_seconds")
    compared_now, agreed_now = shadow_counts(server)
    off = run_cli("--json", "ab-shadow", "--off", "--url", server.url, cwd=project)
    assert off.exit_code == 0, off.stderr
    done = json.loads(off.stdout)
    assert done["enabled"] is False
    # The comparison that ended is recorded as an MLflow run on the shadow version, and tagged there.
    recorded = done["recorded"]
    assert (recorded["version"], recorded["compared"]) == (2, compared_now)
    assert recorded["agreement"] == pytest.approx(agreed_now / compared_now)
    from prodai_cli.registry import Registry

    registry = Registry(load_settings(str(project / "prodai.yaml")))
    run = registry.client.get_run(recorded["run_id"])
    assert run.data.tags["prodai.action"] == "shadow" and run.data.metrics["compared"] == compared_now
    assert registry.get_version("spread/2").tags["prodai.shadow.run_id"] == recorded["run_id"]
    kit.wait_until(lambda: server.metric("prodai_config_reload_timestamp_seconds") > loaded, 60, what="reload")
    assert server.health()["ab"]["shadow"] is None
    before = shadow_counts(server)[0]
    fresh = [kit.Call({"text": f"after shadow off {uuid.uuid4().hex}"}) for _ in range(10)]
    assert [a.status for a in kit.send_all(server.port, fresh, concurrency=2)] == [200] * 10
    time.sleep(1.0)
    assert shadow_counts(server)[0] == before


def test_copies_cost_the_client_no_rate_limit_tokens(
    spread_project: Path, tmp_path: Path, kit: Any, servers: list[Any]
) -> None:
    limited = SHADOWED.replace(
        "rate_limit:\n  enabled: false\n",
        "rate_limit:\n  enabled: true\n  per_ip: {rate: 20, period_s: 600, burst: 0}\n",
    ).replace("auth:\n  enabled: false\n", "auth:\n  enabled: false\ncache:\n  enabled: false\n")
    project = kit.make_project(spread_project, tmp_path / "proj", kit.BASE_CONFIG + limited)
    server = kit.Server(project)
    servers.append(server)
    kit.start_all(server)
    calls = [kit.Call({"text": f"limited {i}"}) for i in range(21)]
    answers = kit.send_all(server.port, calls[:20], concurrency=1)
    assert [a.status for a in answers] == [200] * 20  # 20 allowed, each copied to the shadow
    kit.wait_until(lambda: shadow_counts(server)[0] >= 20, 60, what="20 copies compared")
    assert kit.send_all(server.port, calls[20:], concurrency=1)[0].status == 429  # the limit is real


def test_a_slow_shadow_is_shed_and_counted_while_every_client_is_answered(
    spread_project: Path, tmp_path: Path, kit: Any, servers: list[Any]
) -> None:
    faults = tmp_path / "faults"
    faults.write_text("2 delay=400ms\n")  # every forward pass of the shadow version takes 0.4 s
    config = SHADOWED.replace("    sample: 100%\n", "    sample: 100%\n    max_pending: 4\n")
    project = kit.make_project(spread_project, tmp_path / "proj", kit.BASE_CONFIG + config)
    server = kit.Server(project, env={"PRODAI_FAULTS_FILE": str(faults)})
    servers.append(server)
    kit.start_all(server)
    calls = [kit.Call({"text": f"busy {i} {uuid.uuid4().hex[:6]}"}) for i in range(200)]
    answers = kit.send_all(server.port, calls, concurrency=8)
    assert [a.status for a in answers] == [200] * len(calls)
    assert {a.json()["model_version"] for a in answers} == {"1"}

    def settled() -> tuple[float, float] | None:
        compared = shadow_counts(server)[0]
        dropped = server.metric("prodai_shadow_dropped_total", shadow="v2")
        return (compared, dropped) if compared + dropped == len(calls) else None

    compared, dropped = kit.wait_until(settled, 60, what="every copy compared or dropped")
    assert dropped > 0  # shed (no gap in the primary's queue, or max_pending in flight), never queued past it
    assert server.metric("prodai_shadow_dropped_total", shadow="v2", reason="queue_full") > 0
    assert compared > 0
    assert server.metric("prodai_shadow_errors_total") == 0


def test_ab_shadow_refuses_without_ab_and_names_unknown_versions(spread_project: Path, tmp_path: Path) -> None:
    registered_copy = tmp_path / "proj"
    shutil.copytree(spread_project, registered_copy, symlinks=True)
    (registered_copy / "prodai.yaml").write_text("registry:\n  default_model: spread@production\n", encoding="utf-8")
    refused = run_cli("ab-shadow", "v2", cwd=registered_copy)
    assert refused.exit_code == 2 and "A/B is off" in refused.stderr and "ab-set" in refused.stderr
    (registered_copy / "prodai.yaml").write_text(SHADOWED.replace("  shadow:\n", "  shadowx:\n"), encoding="utf-8")
    bad = run_cli("config", "validate", cwd=registered_copy)
    assert bad.exit_code == 2 and "shadowx" in bad.stderr
    (registered_copy / "prodai.yaml").write_text(SHADOWED.replace("sample: 100%", "sample: 150%"), encoding="utf-8")
    bad = run_cli("config", "validate", cwd=registered_copy)
    assert bad.exit_code == 2 and "ab.shadow.sample" in bad.stderr and "line" in bad.stderr
    (registered_copy / "prodai.yaml").write_text(SHADOWED, encoding="utf-8")
    missing = run_cli("ab-shadow", "v9", cwd=registered_copy)
    assert missing.exit_code == 1 and "9" in missing.stderr
    assert run_cli("ab-shadow", "v2", "--sample", "0%", cwd=registered_copy).exit_code == 2
    before = (registered_copy / "prodai.yaml").read_text()
    dry = run_cli("ab-shadow", "v1", "--sample", "25%", "--dry-run", cwd=registered_copy)
    assert dry.exit_code == 0 and "+    version: 1" in dry.stdout and "+    sample: 0.25" in dry.stdout
    assert (registered_copy / "prodai.yaml").read_text() == before


def test_a_rollout_with_an_agreement_slo_rolls_back_a_candidate_that_answers_otherwise(
    spread_project: Path, tmp_path: Path, kit: Any, servers: list[Any]
) -> None:
    stable = SHADOWED[: SHADOWED.index("  shadow:\n")]
    project = kit.make_project(spread_project, tmp_path / "proj", kit.BASE_CONFIG + stable)
    server = kit.Server(project)
    servers.append(server)
    kit.start_all(server)
    rng = random.Random(11)

    def call(worker: int, index: int) -> Any:
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 16))) + f" {worker} {index}"
        return kit.Call({"text": text}, {"X-User-ID": str(uuid.uuid4())})

    with kit.Hammer(server.port, call, 4) as hammer:
        result = run_cli(
            "--json", "rollout", "spread@staging", "--steps", "50%,100%", "--interval", "4s", "--min-requests", "10",
            "--slo", "agreement > 90%", "--slo", "error_rate < 1%", "--url", server.url, cwd=project, timeout=300,
        )  # fmt: skip
    assert result.exit_code == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "rolled_back" and "agreement" in data["reason"]
    first = data["timeline"][0]
    assert first["window"]["compared"] >= 10 and first["window"]["agreement"] < 0.9
    assert {a.status for _, a in hammer.records} == {200}
    # The original config is back: the stable split and no shadow section.
    ab = load_settings(str(project / "prodai.yaml")).config.ab
    assert {n: (v.version, v.weight) for n, v in ab.variants.items()} == {"production": (1, 1.0)}
    assert not ab.shadow.enabled and "shadow" not in (project / "prodai.yaml").read_text()
