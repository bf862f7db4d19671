"""`prodai deploy` of an ONNX version builds the torch-free image: onnxruntime, transformers' tokenizer, the server.

Built offline on the real engine like every deploy, then served: the image must be under 500 MB, torch must not
import inside it, and its answers must equal the version's own outside it (the local runtime, same texts).
The plan's choice of variant (onnx, cpu with onnxruntime, refusal on a GPU) is checked without Docker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, run_cli

from prodai_cli.config import load_settings
from prodai_cli.deploy.plan import plan_deployment
from prodai_cli.deploy.wheelhouse import runtime_requirements
from prodai_cli.errors import UsageError
from prodai_cli.runtime import load_runtime

LIMIT_BYTES = 500_000_000
# One fixed tag: its build stage (prodai-build-stage:prodai-test-onnx-ci, the layer cache) is replaced each run.
TAG = "prodai-test-onnx:ci"
CONFIG = """\
# deployed by the ONNX image test
serving:
  max_wait_ms: 0
"""
AB_TORCH_AND_ONNX = """\
ab:
  enabled: true
  model: clf
  variants:
    torch: {version: 1, weight: 0.5}
    onnx: {version: 2, weight: 0.5}
"""
TEXTS = ["good movie", "the movie was very bad", "hello world " * 30, "not great, not terrible"]


def project_copy(source: Path, target: Path, config: str) -> Path:
    shutil.copytree(source, target, symlinks=True)
    (target / "prodai.yaml").write_text(config, encoding="utf-8")
    target.chmod(0o755)
    (target / "prodai.yaml").chmod(0o644)
    return target


def requirement_names(requirements: str) -> set[str]:
    return {line.split("==")[0] for line in requirements.splitlines() if line}


def test_all_onnx_versions_plan_the_torch_free_variant_mixed_ones_add_onnxruntime_and_a_gpu_is_refused(
    onnx_project: Path, tmp_path: Path
) -> None:
    root = project_copy(onnx_project, tmp_path / "proj", CONFIG)
    settings = load_settings(root / "prodai.yaml")
    onnx = plan_deployment(settings, model_ref="clf/2")
    assert (onnx.variant, onnx.backends, onnx.gpu) == ("onnx", ["onnx"], False)
    assert onnx.config_data["serving"]["device"] == "cpu"
    names = requirement_names(runtime_requirements(onnx.variant)[0])
    assert "onnxruntime" in names and "transformers" in names and "torch" not in names

    torch = plan_deployment(settings, model_ref="clf/1")
    assert (torch.variant, torch.backends) == ("cpu", ["torch"])
    assert "onnxruntime" not in requirement_names(runtime_requirements(torch.variant)[0])

    (root / "prodai.yaml").write_text(CONFIG + AB_TORCH_AND_ONNX, encoding="utf-8")
    mixed = plan_deployment(load_settings(root / "prodai.yaml"))
    assert (mixed.variant, mixed.backends, mixed.versions) == ("cpu", ["onnx", "torch"], [1, 2])
    assert {"torch", "onnxruntime"} <= requirement_names(runtime_requirements(mixed.variant, onnx=True)[0])

    with pytest.raises(UsageError, match="clf/2 is an ONNX version, which runs on the CPU only"):
        plan_deployment(settings, model_ref="clf/2", gpu=True)


def expected_predictions(root: Path, ref: str) -> list[dict[str, Any]]:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return load_runtime(ref, load_settings(), device="cpu").predict(TEXTS)
    finally:
        os.chdir(cwd)


def venv_layer_bytes(docker_client: Any, image_id: str) -> int:
    history = docker_client.api.history(image_id)
    return max(int(layer.get("Size") or 0) for layer in history if "/opt/venv" in (layer.get("CreatedBy") or ""))


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_an_onnx_deploy_is_a_torch_free_image_under_500_mb_answering_as_the_version_does(
    docker_client: Any, onnx_project: Path, tmp_path: Path, deploy_env: dict[str, str]
) -> None:
    from docker.errors import APIError, ImageNotFound

    from prodai_cli.deploy import containers as engine

    root = project_copy(onnx_project, tmp_path / "proj", CONFIG)
    created = run_cli("keys", "create", "--name", "onnx-image", "--json", cwd=root)
    assert created.exit_code == 0, created.stderr
    key = created.json()["key"]  # type: ignore[index]
    port = free_port()
    name = f"prodai-test-onnx-{port}"
    try:
        result = run_cli(
            "deploy", "--model", "clf/2", "--port", str(port), "--name", name, "--tag", TAG, "--json",
            cwd=root, env=deploy_env, timeout=1500,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr[-4000:]
        image = docker_client.images.get(TAG)
        size = int(image.attrs["Size"])
        venv = venv_layer_bytes(docker_client, image.id)
        limit = LIMIT_BYTES / 1e6
        print(f"\nONNX image {TAG}: {size / 1e6:,.0f} MB (limit {limit:,.0f} MB), venv layer {venv / 1e6:,.0f} MB")
        assert image.labels["prodai.variant"] == "onnx"
        assert size < LIMIT_BYTES, f"{size / 1e6:,.0f} MB"

        record = json.loads((root / ".prodai" / "deployments" / f"{name}.json").read_text(encoding="utf-8"))
        server = docker_client.containers.get(record["container_id"])
        code, (_out, err) = server.exec_run(["python3", "-c", "import torch"], demux=True)
        assert code == 1 and b"No module named 'torch'" in (err or b""), err
        # (transformers also says on stderr that it found no PyTorch.)
        code, (out, err) = server.exec_run(
            ["python3", "-c", "import onnxruntime, transformers; print('ok')"], demux=True
        )
        assert (code, (out or b"").strip()) == (0, b"ok"), err

        url = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{url}/predict", json={"text": TEXTS[0]}, timeout=30).status_code == 401
        served = []
        for text in TEXTS:
            response = httpx.post(f"{url}/predict", json={"text": text}, headers={"X-API-Key": key}, timeout=30)
            assert response.status_code == 200, response.text
            served.append(response.json())
        expected = expected_predictions(root, "clf/2")
        assert [(s["label"], s["model_version"]) for s in served] == [(e["label"], "2") for e in expected]
        assert [s["confidence"] for s in served] == pytest.approx([e["confidence"] for e in expected], abs=1e-6)
    finally:
        for container in docker_client.containers.list(all=True, filters={"label": f"prodai.deployment={name}"}):
            engine.remove_container(docker_client, container.id, timeout_s=5)
        engine.remove_network(docker_client, f"{name}-net")
        with contextlib.suppress(ImageNotFound, APIError):
            docker_client.images.remove(TAG, force=True, noprune=False)
