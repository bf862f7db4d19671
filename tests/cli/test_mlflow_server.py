"""The same registry commands against a real `mlflow server` process on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import free_port, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start: " + (tmp_path / "mlflow-server.log").read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_register_promote_resolve_on_a_remote_server(
    mlflow_server: str, tiny_classifier_dir: Path, project: Path
) -> None:
    env = {"PRODAI_TRACKING_URI": mlflow_server}
    for expected in (1, 2):
        result = run_cli("register", str(tiny_classifier_dir), "--name", "remote", "--json", cwd=project, env=env)
        assert result.exit_code == 0, result.stderr
        assert result.json()["version"] == expected  # type: ignore[index]
    assert not (project / ".prodai" / "mlflow.db").exists()  # nothing went to the embedded store
    promoted = run_cli("models", "promote", "remote", "1", "--alias", "production", cwd=project, env=env)
    assert promoted.exit_code == 0, promoted.stderr
    resolved = run_cli("models", "resolve", "remote@production", "--json", cwd=project, env=env)
    assert resolved.exit_code == 0, resolved.stderr
    data = resolved.json()
    assert data["version"] == 1  # type: ignore[index]
    assert (Path(data["path"]) / "model" / "config.json").is_file()  # type: ignore[index]
    listed = run_cli("models", "list", "--json", cwd=project, env=env)
    assert [m["name"] for m in listed.json()] == ["remote"]  # type: ignore[union-attr]
    missing = run_cli("models", "resolve", "remote@nope", cwd=project, env=env)
    assert missing.exit_code == 1 and "has no alias 'nope'" in missing.stderr
