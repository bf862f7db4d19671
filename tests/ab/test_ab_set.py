"""`prodai ab-set` through the real CLI against a real MLflow registry (clf v1@production, v2@staging)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO_ROOT, run_cli

from prodai_cli.config import parse_config_text


def _variants(path: Path) -> dict[str, tuple[int | str, float]]:
    ab = parse_config_text(path.read_text(encoding="utf-8")).ab
    return {name: (spec.version, spec.weight) for name, spec in ab.variants.items()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _comment_lines(text: str) -> list[str]:
    return [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]


@pytest.mark.slow
def test_ab_set_versions_writes_numbers_keeps_comments(ab_project: Path) -> None:
    path = ab_project / "prodai.yaml"
    before = path.read_text(encoding="utf-8")
    result = run_cli("ab-set", "v1=0.8", "v2=0.2", "--model", "clf", "--json", cwd=ab_project)
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert isinstance(data, dict)
    assert data["model"] == "clf"
    assert data["variants"] == {"v1": {"version": 1, "weight": 0.8}, "v2": {"version": 2, "weight": 0.2}}
    assert data["written"] is True
    assert "+    v1:" in data["diff"] and "-  enabled: false" in data["diff"]
    after = path.read_text(encoding="utf-8")
    config = parse_config_text(after).ab
    assert config.enabled and config.model == "clf"
    assert _variants(path) == {"v1": (1, 0.8), "v2": (2, 0.2)}
    # Every comment of the file, the generated ones and the user's, is still there, in order.
    assert _comment_lines(after) == _comment_lines(before)
    assert "# Traffic split owned by the ML team; ask #ml-serving before changing.\nab:\n" in after
    assert "  # port 8000 is taken by the sidecar on staging\n" in after
    # Only enabled, model and variants changed: the text before and after them is byte-identical.
    assert after.split("\nab:\n")[0] == before.split("\nab:\n")[0]
    assert after[after.index("  salt: ") :] == before[before.index("  salt: ") :]


@pytest.mark.slow
def test_ab_set_aliases_as_percentages_store_version_numbers(ab_project: Path) -> None:
    path = ab_project / "prodai.yaml"
    result = run_cli("ab-set", "production=80%", "staging=20%", "--model", "clf", "--json", cwd=ab_project)
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert isinstance(data, dict)
    assert data["variants"] == {
        "production": {"version": 1, "weight": 0.8, "alias": "production"},
        "staging": {"version": 2, "weight": 0.2, "alias": "staging"},
    }
    assert _variants(path) == {"production": (1, 0.8), "staging": (2, 0.2)}
    # A second run replaces the variants (no stale v1/v2 left) and reuses ab.model: no --model needed.
    result = run_cli("ab-set", "1=0.5", "2=0.5", cwd=ab_project)
    assert result.exit_code == 0, result.stderr
    assert _variants(path) == {"v1": (1, 0.5), "v2": (2, 0.5)}
    assert "Wrote prodai.yaml: clf v1 50.0% (version 1), v2 50.0% (version 2)" in result.stdout
    # The same state again writes nothing.
    again = run_cli("ab-set", "v1=50%", "v2=0.5", "--json", cwd=ab_project)
    assert again.exit_code == 0, again.stderr
    again_data = again.json()
    assert isinstance(again_data, dict) and again_data["written"] is False and again_data["diff"] == ""


@pytest.mark.slow
def test_ab_set_creates_the_config_when_there_is_none(registered_copy: Path) -> None:
    path = registered_copy / "prodai.yaml"
    assert not path.exists()
    result = run_cli("ab-set", "v2=1", "--model", "clf", cwd=registered_copy)
    assert result.exit_code == 0, result.stderr
    assert _variants(path) == {"v2": (2, 1.0)}
    ab = parse_config_text(path.read_text(encoding="utf-8")).ab
    assert ab.enabled and ab.model == "clf"


@pytest.mark.slow
def test_ab_set_model_from_default_model_and_explicit_config(registered_copy: Path) -> None:
    # Beside .prodai/ (the registry lives relative to the config's directory), under another name.
    other = registered_copy / "serving.yaml"
    other.write_text("# team config\nregistry:\n  default_model: clf@production  # what we ship\n", encoding="utf-8")
    result = run_cli("--config", str(other), "ab-set", "v1=0.3", "v2=0.7", cwd=registered_copy)
    assert result.exit_code == 0, result.stderr
    text = other.read_text(encoding="utf-8")
    assert text.startswith("# team config\nregistry:\n  default_model: clf@production  # what we ship\n")
    assert parse_config_text(text).ab.model == "clf"
    assert _variants(other) == {"v1": (1, 0.3), "v2": (2, 0.7)}
    assert not (registered_copy / "prodai.yaml").exists()


@pytest.mark.slow
def test_dry_run_prints_the_diff_and_writes_nothing(ab_project: Path) -> None:
    path = ab_project / "prodai.yaml"
    digest, mtime = _digest(path), path.stat().st_mtime_ns
    result = run_cli("ab-set", "v1=0.9", "v2=0.1", "--model", "clf", "--dry-run", cwd=ab_project)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("--- a/prodai.yaml\n+++ b/prodai.yaml\n")
    assert "+      weight: 0.9\n" in result.stdout and "-  enabled: false" in result.stdout
    assert "not written" in result.stderr
    as_json = run_cli("ab-set", "v1=0.9", "v2=0.1", "--model", "clf", "--dry-run", "--json", cwd=ab_project)
    data = as_json.json()
    assert isinstance(data, dict) and data["written"] is False and data["diff"] == result.stdout
    assert _digest(path) == digest and path.stat().st_mtime_ns == mtime


# Refused edits: (arguments, exit code, text the error must contain). Malformed input never reaches the registry.
REFUSED = [
    (["v1=0.8", "v2=0.3"], 2, "Weights sum to 1.1 (110%), not 1 (100%)"),
    (["v1=80%", "v2=30%"], 2, "Weights sum to 1.1 (110%), not 1 (100%)"),
    (["v1:0.8", "v2=0.2"], 2, "Expected NAME=WEIGHT, got 'v1:0.8'"),
    (["v1=abc", "v2=0.2"], 2, "Weight 'abc' is not a number"),
    (["v1=80", "v2=0.2"], 2, "Weight '80' is above 1"),
    (["v1=-0.2", "v2=1.2"], 2, "is negative"),
    (["v1=nan", "v2=0.2"], 2, "not a finite number"),
    (["v1=0.5", "1=0.5"], 2, "Variant 'v1' is given twice"),
    (["=0.5", "v2=0.5"], 2, "names no variant"),
    (["v1.5=0.5", "v2=0.5"], 2, "neither a version"),
    (["v0=0.5", "v2=0.5"], 2, "versions start at 1"),
    (["v1=0.5", "v7=0.5"], 1, "Model 'clf' has no version 7"),
    (["v1=0.5", "canary=0.5"], 1, "no alias 'canary'. Nothing was written Hint: Its aliases: production, staging"),
    (["v9=0.5", "canary=0.5"], 1, "Model 'clf' has no version 9; Model 'clf' has no alias 'canary'"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "code", "message"), REFUSED, ids=[" ".join(r[0]) for r in REFUSED])
def test_refused_edits_leave_the_file_byte_for_byte(ab_project: Path, args: list[str], code: int, message: str) -> None:
    path = ab_project / "prodai.yaml"
    digest = _digest(path)
    result = run_cli("ab-set", *args, "--model", "clf", cwd=ab_project)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert message in " ".join(result.stderr.split()), result.stderr
    assert result.stdout == ""
    assert _digest(path) == digest
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_unknown_model_and_missing_model_are_refused(ab_project: Path) -> None:
    path = ab_project / "prodai.yaml"
    digest = _digest(path)
    unknown = run_cli("ab-set", "v1=1", "--model", "nope", cwd=ab_project)
    assert unknown.exit_code == 1 and "Unknown model 'nope'" in unknown.stderr
    assert "Known models: clf, emb" in unknown.stderr
    missing = run_cli("ab-set", "v1=1", cwd=ab_project)
    assert missing.exit_code == 2 and "No model to split traffic for" in missing.stderr
    ref = run_cli("ab-set", "v1=1", "--model", "clf@production", cwd=ab_project)
    assert ref.exit_code == 2 and "--model takes a model name" in ref.stderr
    assert _digest(path) == digest


@pytest.mark.slow
def test_an_edit_that_would_make_the_file_invalid_is_refused(ab_project: Path) -> None:
    # The hand-written fallback names v1; replacing the variants would leave it dangling.
    path = ab_project / "prodai.yaml"
    first = run_cli("ab-set", "v1=0.5", "v2=0.5", "--model", "clf", cwd=ab_project)
    assert first.exit_code == 0, first.stderr
    path.write_text(path.read_text(encoding="utf-8").replace("fallback: null", "fallback: v1"), encoding="utf-8")
    digest = _digest(path)
    result = run_cli("ab-set", "production=1", cwd=ab_project)
    assert result.exit_code == 2
    assert "fallback 'v1' is not a variant" in result.stderr and "line" in result.stderr
    assert _digest(path) == digest


@pytest.mark.slow
def test_twenty_concurrent_ab_sets_leave_one_requested_state(ab_project: Path) -> None:
    path = ab_project / "prodai.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
    states = {i: {"v1": (1, i / 100), "v2": (2, (100 - i) / 100)} for i in range(1, 21)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "prodai_cli", "ab-set", f"v1={i}%", f"v2={100 - i}%", "--model", "clf"],
            cwd=ab_project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in states
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    final = _variants(path)
    assert final in states.values(), final
    text = path.read_text(encoding="utf-8")
    assert text.count("\nab:\n") == 1 and text.count("    v1:\n") == 1
    assert "# Traffic split owned by the ML team" in text
    assert not list(ab_project.glob(".prodai.yaml.*.tmp"))


def _states_of(text: str) -> dict[str, tuple[int | str, float]]:
    ab = parse_config_text(text).ab
    return {name: (spec.version, spec.weight) for name, spec in ab.variants.items()}


@pytest.mark.slow
def test_sigkill_of_ab_set_at_random_moments_never_leaves_a_partial_file(ab_project: Path) -> None:
    path = ab_project / "prodai.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
    # Time one whole run, so kills spread over start-up, registry look-ups and the write.
    started = time.monotonic()
    assert run_cli("ab-set", "v1=0.5", "v2=0.5", "--model", "clf", cwd=ab_project).exit_code == 0
    duration = time.monotonic() - started
    allowed = [{"v1": (1, 0.5), "v2": (2, 0.5)}]
    rng = random.Random(5)
    completed = 0
    for attempt in range(8):
        weight = 10 + attempt
        allowed.append({"v1": (1, weight / 100), "v2": (2, (100 - weight) / 100)})
        proc = subprocess.Popen(
            [sys.executable, "-m", "prodai_cli", "ab-set", f"v1={weight}%", f"v2={100 - weight}%"],
            cwd=ab_project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Most kills land late in the run, where the lock and the write happen.
        time.sleep(duration * rng.uniform(0.5, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        completed += proc.returncode == 0
        state = _states_of(path.read_text(encoding="utf-8"))
        assert state in allowed, (attempt, state)
    # The file is still editable afterwards (no lock is left held by a dead process).
    assert run_cli("ab-set", "v1=0.6", "v2=0.4", cwd=ab_project).exit_code == 0
    assert _variants(path) == {"v1": (1, 0.6), "v2": (2, 0.4)}


# A writer that edits the file in a loop on a disk made slow (file fsyncs take 0.2 s), so that most kills land
# while a temp file is being written and synced, before it replaces the config.
WRITER = """
import os, stat, sys, time
from pathlib import Path
from prodai_cli.abconfig import ResolvedVariant, write_ab_variants
real_fsync = os.fsync
def slow_fsync(fd):
    if stat.S_ISREG(os.fstat(fd).st_mode):
        time.sleep(0.2)
    real_fsync(fd)
os.fsync = slow_fsync
path = Path(sys.argv[1])
states = [
    [ResolvedVariant("v1", 1, 0.8, 1), ResolvedVariant("v2", 2, 0.2, 2)],
    [ResolvedVariant("v1", 1, 0.3, 1), ResolvedVariant("v2", 2, 0.7, 2)],
]
print("ready", flush=True)
i = 0
while True:
    write_ab_variants(path, "clf", states[i % 2])
    i += 1
"""


@pytest.mark.slow
def test_sigkill_mid_write_never_leaves_a_partial_file_slow_disk(ab_project: Path, tmp_path: Path) -> None:
    from prodai_cli.abconfig import ResolvedVariant, write_ab_variants

    path = ab_project / "prodai.yaml"
    states = [
        [ResolvedVariant("v1", 1, 0.8, 1), ResolvedVariant("v2", 2, 0.2, 2)],
        [ResolvedVariant("v1", 1, 0.3, 1), ResolvedVariant("v2", 2, 0.7, 2)],
    ]
    # Every complete text the file can hold: the original and the alternating edits (they settle quickly).
    rehearsal = tmp_path / "prodai.yaml"
    rehearsal.write_bytes(path.read_bytes())
    complete = {path.read_text(encoding="utf-8")}
    for i in range(6):
        write_ab_variants(rehearsal, "clf", states[i % 2])
        complete.add(rehearsal.read_text(encoding="utf-8"))
    assert len(complete) <= 5, "edits do not settle: the file would drift on every ab-set"
    rng = random.Random(11)
    torn_writes = 0
    for attempt in range(25):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.1, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
        assert path.read_text(encoding="utf-8") in complete, f"attempt {attempt}: partial or unexpected file"
        leftovers = list(ab_project.glob(".prodai.yaml.*.tmp"))
        torn_writes += bool(leftovers)
        for leftover in leftovers:
            leftover.unlink()
    # Evidence the kills really interrupted writes (a temp file was in flight when the process died).
    assert torn_writes >= 5, torn_writes
