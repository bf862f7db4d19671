"""The build context under ``.prodai/build/<tag>/``: everything the image needs, so its build needs no network.

Layout::

    Dockerfile          rendered from the packaged template
    requirements.txt    the runtime pins (installed from wheelhouse/ only)
    wheelhouse/         runtime wheels, hard-linked from the cache
    dist/               the prodai wheel (installed with --no-deps)
    models/NAME/VER/    the baked model versions, laid out like the registry's local cache
    prodai.yaml         the container's config (references resolved to versions)
    build.json          what was baked, for people and for `deploy status`
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prodai_cli.deploy.plan import (
    CONTAINER_JOBS_DIR,
    CONTAINER_PORT,
    CONTAINER_UID,
    IMAGE_PYTHON,
    DeployPlan,
    docker_name,
    runs_celery,
)
from prodai_cli.deploy.templates import render
from prodai_cli.deploy.wheelhouse import Wheelhouse, build_prodai_wheel, build_wheelhouse, image_packages

CONFIG_FILE = "prodai.yaml"
Progress = Callable[[str], None]


@dataclass
class BuildContext:
    """A written build context."""

    directory: Path
    labels: dict[str, str]
    wheelhouse: Wheelhouse
    prodai_wheel: Path
    models_bytes: int = 0
    files: list[str] = field(default_factory=list)


def image_labels(plan: DeployPlan) -> dict[str, str]:
    """The labels every prodai image carries (model, versions, prodai version, config hash)."""
    from prodai_cli import __version__

    return {
        "org.opencontainers.image.title": plan.tag.split(":")[0],
        "org.opencontainers.image.description": f"prodai server for {plan.model}",
        "prodai.managed": "true",
        "prodai.model": plan.model,
        "prodai.model-versions": ",".join(str(v) for v in plan.versions),
        "prodai.serving-version": str(plan.version),
        "prodai.version": __version__,
        "prodai.config-hash": plan.config_hash,
        "prodai.variant": plan.variant,
    }


def dockerfile_text(plan: DeployPlan, prodai_wheel: str) -> str:
    """The rendered Dockerfile of a plan."""
    return render(
        "Dockerfile.j2",
        base_image=plan.base_image,
        variant=plan.variant,
        labels=image_labels(plan),
        config_file=CONFIG_FILE,
        container_port=CONTAINER_PORT,
        device="cuda" if plan.gpu else "cpu",
        uid=CONTAINER_UID,
        jobs_dir=CONTAINER_JOBS_DIR,
        prodai_wheel=prodai_wheel,
    )


def context_dir(plan: DeployPlan) -> Path:
    """``.prodai/build/<tag>/`` of a plan."""
    return plan.settings.state_dir / "build" / docker_name(plan.tag.replace(":", "_").replace("/", "_"))


def assemble(plan: DeployPlan, *, progress: Progress | None = None) -> BuildContext:
    """Write the build context of ``plan`` (replacing an older one of the same tag).

    Args:
        plan: What to bake.
        progress: Called with a line per step (and pip's output while the wheelhouse downloads).

    """
    say = progress or (lambda _line: None)
    directory = context_dir(plan)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    onnx = "onnx" in plan.backends
    jobs = runs_celery(plan.settings)
    if plan.variant == "onnx":
        runtime = "onnxruntime, no torch"
    else:
        runtime = f"{plan.variant} torch" + (" + onnxruntime" if onnx else "")
    say(f"Preparing the wheelhouse ({runtime}{', Celery' if jobs else ''}, Python {IMAGE_PYTHON})")
    wheelhouse = build_wheelhouse(plan.variant, onnx=onnx, progress=progress, python_version=IMAGE_PYTHON, jobs=jobs)
    for wheel in sorted(wheelhouse.directory.glob("*.whl")):
        _link_or_copy(wheel, directory / "wheelhouse" / wheel.name)
    (directory / "requirements.txt").write_text(wheelhouse.requirements, encoding="utf-8")
    prodai_wheel = build_prodai_wheel(directory / "dist", image_packages(plan.variant, onnx=onnx))
    models_bytes = 0
    for model in plan.models:
        say(f"Baking {model.name} version {model.version}")
        models_bytes += _copy_tree(model.source, directory / "models" / model.relative_dir)
        sidecar = directory / "models" / model.relative_dir / "version.json"
        if not sidecar.is_file():
            raise_missing_sidecar(model.source)
    (directory / CONFIG_FILE).write_text(plan.config_text(), encoding="utf-8")
    (directory / "Dockerfile").write_text(dockerfile_text(plan, prodai_wheel.name), encoding="utf-8")
    labels = image_labels(plan)
    build_info = {
        "tag": plan.tag,
        "model": plan.model,
        "versions": plan.versions,
        "variant": plan.variant,
        "backends": plan.backends,
        "base_image": plan.base_image,
        "labels": labels,
        "wheelhouse": str(wheelhouse.directory),
        "requirements": wheelhouse.requirements.splitlines(),
    }
    (directory / "build.json").write_text(json.dumps(build_info, indent=2) + "\n", encoding="utf-8")
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return BuildContext(directory, labels, wheelhouse, prodai_wheel, models_bytes, files)


def raise_missing_sidecar(source: Path) -> None:
    """A cached version without its version.json cannot be found by a registry-less server."""
    from prodai_cli.errors import DeployError

    raise DeployError(
        f"{source} has no version.json: the container could not find this version without a registry",
        hint=f"Remove {source} and run deploy again (the version is downloaded afresh)",
    )


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    mode = target.stat().st_mode
    if not mode & stat.S_IROTH:
        # The image's non-root user must read it; COPY keeps the mode it finds here.
        os.chmod(target, mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _copy_tree(source: Path, target: Path) -> int:
    """Link (or copy) every file of ``source`` under ``target`` with world-readable modes; returns bytes."""
    total = 0
    for path in sorted(source.rglob("*")):
        if path.is_dir() or path.name.startswith(".download-"):
            continue
        destination = target / path.relative_to(source)
        _link_or_copy(path, destination)
        total += destination.stat().st_size
    for directory in [target, *(p for p in target.rglob("*") if p.is_dir())]:
        os.chmod(directory, 0o755)
    return total
