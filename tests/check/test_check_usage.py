"""Usage errors of `prodai check`, found before any request is sent (exit 2, with a hint)."""

from __future__ import annotations

from pathlib import Path

from helpers import run_cli

from prodai_cli.config import ProdaiConfig, Settings
from prodai_cli.deploy import records


def _record(root: Path, name: str, target: str) -> None:
    settings = Settings(config=ProdaiConfig(), path=None, root=root)
    records.save(
        settings,
        records.DeploymentRecord(
            name=name,
            url="http://127.0.0.1:9" if target == "docker" else str(root / "k8s"),
            model="clf",
            version=1,
            target=target,
            image="prodai-clf:1",
            container_id=None,
            previous_image=None,
            created=records.now_iso(),
        ),
    )


def test_unknown_deployment_lists_the_known_ones(tmp_path: Path) -> None:
    _record(tmp_path, "prodai-clf", "docker")
    result = run_cli("check", "--deployment", "nope", cwd=tmp_path)
    assert result.exit_code == 2
    assert "Unknown deployment 'nope'" in result.stderr and "prodai-clf" in result.stderr


def test_a_k8s_deployment_needs_a_url(tmp_path: Path) -> None:
    _record(tmp_path, "prodai-clf", "k8s")
    result = run_cli("check", "--deployment", "prodai-clf", cwd=tmp_path)
    assert result.exit_code == 2
    assert "is a k8s deployment" in result.stderr and "--url" in result.stderr


def test_url_and_deployment_exclude_each_other(tmp_path: Path) -> None:
    result = run_cli("check", "--url", "http://127.0.0.1:9", "--deployment", "x", cwd=tmp_path)
    assert result.exit_code == 2 and "not both" in result.stderr
    bad = run_cli("check", "--url", "ftp://example", cwd=tmp_path)
    assert bad.exit_code == 2 and "Invalid URL" in bad.stderr
