"""The local model cache is checked before use, and registry reads skip MLflow on the embedded store.

Issue 15 item 6: a corrupted ``.prodai/models/NAME/VERSION`` file was served and baked into an image as
is. Now every cached version carries a SHA-256 manifest (its digest is recorded on the version at
registration); a mismatch downloads the version again, or stops with a clear error when it cannot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port, run_cli

from prodai_cli import model_cache
from prodai_cli.config import load_settings
from prodai_cli.errors import ModelIntegrityError, ModelNotFoundError
from prodai_cli.refs import ModelRef
from prodai_cli.registry import Registry

WORDS = ["hello", "world", "good", "bad", "movie"]


def _weights(project: Path, version: int = 1) -> Path:
    return project / ".prodai" / "models" / "clf" / str(version) / "model" / "model.safetensors"


def _corrupt(path: Path) -> bytes:
    """Flip bytes in the middle of a file without changing its size; return the original bytes."""
    original = path.read_bytes()
    middle = len(original) // 2
    path.write_bytes(
        original[:middle] + bytes(b ^ 0xFF for b in original[middle : middle + 64]) + original[middle + 64 :]
    )
    return original


def _inputs(project: Path) -> Path:
    path = project / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"{w} movie"}) + "\n" for i, w in enumerate(WORDS)))
    return path


def test_registration_caches_the_version_and_records_its_digest(registered_copy: Path) -> None:
    root = registered_copy / ".prodai" / "models" / "clf" / "1"
    manifest = json.loads((root / model_cache.MANIFEST_FILE).read_text())
    assert "model/model.safetensors" in manifest["files"] and "version.json" not in manifest["files"]
    info = Registry(load_settings()).get_version("clf/1")
    assert info.tags[model_cache.DIGEST_TAG] == manifest["digest"] == model_cache.manifest_digest(manifest["files"])
    assert model_cache.check_files(root, manifest["digest"]) == []
    cached = Registry(load_settings()).cached("clf", 1)
    assert cached is not None and cached.info.tags[model_cache.DIGEST_TAG] == manifest["digest"]


def test_a_corrupted_cache_is_fetched_again_from_the_registry(registered_copy: Path) -> None:
    weights = _weights(registered_copy)
    original = _corrupt(weights)
    _inputs(registered_copy)
    result = run_cli("--json", "batch", "in.jsonl", "--model", "clf/1", "--device", "cpu", cwd=registered_copy)
    assert result.exit_code == 0, result.stderr
    assert "do not match their manifest" in result.stderr and "model/model.safetensors changed" in result.stderr
    assert weights.read_bytes() == original  # downloaded again, not served as it was
    assert json.loads(result.stdout)["items"] == len(WORDS)


def test_a_corrupted_cache_without_a_registry_stops_with_a_clear_error(registered_copy: Path) -> None:
    _inputs(registered_copy)
    _corrupt(_weights(registered_copy, 2))
    (registered_copy / ".prodai" / "mlflow.db").unlink()  # as in a container: baked models, no registry
    for args in (
        ("models", "resolve", "clf/2"),
        ("batch", "in.jsonl", "--model", "clf/2", "--device", "cpu", "-o", "out.jsonl"),
        ("serve", "--model", "clf/2", "--port", str(free_port())),
    ):
        result = run_cli(*args, cwd=registered_copy, timeout=120)
        assert result.exit_code == 1, (args, result.stderr)
        assert "The cached files of clf/2 do not match the hashes recorded" in result.stderr, result.stderr
        assert "model/model.safetensors changed" in result.stderr
    assert not (registered_copy / "out.jsonl").exists()  # the refused batch left nothing behind


def test_a_corrupted_cache_is_never_baked_into_an_image(registered_copy: Path) -> None:
    from prodai_cli.deploy.plan import plan_deployment

    settings = load_settings()
    original = _corrupt(_weights(registered_copy, 2))
    plan = plan_deployment(settings, model_ref="clf@staging")  # the registry is there: fetched again
    assert model_cache.check_files(plan.models[0].source) == []
    assert _weights(registered_copy, 2).read_bytes() == original


def test_a_missing_or_added_file_is_a_mismatch(registered_copy: Path) -> None:
    root = registered_copy / ".prodai" / "models" / "clf" / "1"
    (root / "model" / "config.json").unlink()
    (root / "model" / "extra.bin").write_bytes(b"x")
    problems = model_cache.check_files(root)
    assert "model/config.json is missing" in problems and "model/extra.bin was added" in problems
    with pytest.raises(ModelIntegrityError, match=r"model/config\.json is missing"):
        Registry(load_settings()).cached("clf", 1)


# ------------------------------------------------------------------------------------ SQLite lookups


def test_sqlite_lookups_answer_exactly_what_mlflow_answers(registered_copy: Path) -> None:
    registry = Registry(load_settings())
    for ref in (
        ModelRef("clf", version=1),
        ModelRef("clf", version=2),
        ModelRef("clf", alias="production"),
        ModelRef("clf", alias="staging"),
        ModelRef("clf"),
        ModelRef("emb"),
    ):
        fast = registry._sqlite_version(ref)
        assert fast is not None, ref
        registry._sqlite_version = lambda _ref: None  # type: ignore[method-assign]  # MLflow's answer
        assert fast == registry.get_version(ref), ref
        del registry._sqlite_version
    for missing in (ModelRef("clf", alias="nope"), ModelRef("clf", version=9), ModelRef("nobody")):
        assert registry._sqlite_version(missing) is None
    with pytest.raises(ModelNotFoundError, match="has no alias 'nope'"):
        registry.get_version(ModelRef("clf", alias="nope"))  # MLflow still words the refusal


def test_batch_on_an_alias_never_imports_mlflow(registered_copy: Path) -> None:
    _inputs(registered_copy)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from prodai_cli.batch import BatchJob, run_batch\n"
        "summary = run_batch(BatchJob(input=Path('in.jsonl'), model='clf@production', device='auto'))\n"
        "print(summary.model_version, summary.items, 'mlflow' in sys.modules)\n"
        "assert 0 < summary.extra['first_forward_s'] <= summary.wall_s, summary.extra\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=registered_copy, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", str(len(WORDS)), "False"]
