"""What a deployment bakes in: the model versions the config serves, resolved to numbers, and the container's config.

A container has no registry (and no mlflow): every model reference in the config it reads must be a
``NAME/VERSION`` whose files are baked into the image under ``/app/.prodai/models/``. This module turns
the project's config into that form and decides the image tag and deployment name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prodai_cli.errors import UsageError

if TYPE_CHECKING:
    from prodai_cli.config import Settings
    from prodai_cli.registry import ResolvedModel

CONTAINER_PORT = 8080
CONTAINER_UID = 10001
# The image's Python: wheels are chosen for it. python:3.11-slim and Debian bookworm both have 3.11.
IMAGE_PYTHON = "3.11"
# Where the k8s Secret with the API key hashes is mounted.
K8S_KEYS_FILE = "/etc/prodai/keys/keys.yaml"
# The jobs directory in a container (jobs.dir): the volume the server replicas and the job workers share. The
# image creates it owned by the container's user, so a fresh Docker volume mounted there gets that owner.
CONTAINER_JOBS_DIR = "/var/lib/prodai/jobs"

# cpu and cuda: torch's CPU or CUDA build (plus onnxruntime when an ONNX version is among the baked ones);
# onnx: every baked version is an ONNX export, so the image holds onnxruntime and no torch at all.
Variant = Literal["cpu", "cuda", "onnx"]


@dataclass(frozen=True)
class BakedModel:
    """One model version baked into the image.

    Attributes:
        name: Registered model name.
        version: Version number.
        task: The task tag of the version.
        source: Its files on this machine (the registry's local cache).
        relative_dir: Where it goes under ``.prodai/models/`` (the same layout the registry's cache uses).
        backend: The runtime backend its files are for (``torch`` or ``onnx``).

    """

    name: str
    version: int
    task: str | None
    source: Path
    relative_dir: str
    backend: str = "torch"


@dataclass
class DeployPlan:
    """Everything a deployment needs to know before it builds anything."""

    settings: Settings
    name: str
    model: str
    version: int
    models: list[BakedModel]
    tag: str
    variant: Variant
    base_image: str
    config_data: dict[str, Any]
    environment: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def gpu(self) -> bool:
        """True for the CUDA variant."""
        return self.variant == "cuda"

    @property
    def backends(self) -> list[str]:
        """The runtime backends of the baked versions, sorted (the image installs what they need)."""
        return sorted({m.backend for m in self.models})

    @property
    def versions(self) -> list[int]:
        """Every baked version number, ascending."""
        return sorted({m.version for m in self.models})

    def config_text(self, *, keys_file: str | None = None) -> str:
        """The container's prodai.yaml.

        Args:
            keys_file: Move the API key hashes out of the file and point ``auth.keys_file`` here (k8s Secret).

        """
        import yaml

        data = _copy(self.config_data)
        if keys_file is not None:
            data["auth"]["keys"] = []
            data["auth"]["keys_file"] = keys_file
        header = (
            f"# prodai.yaml baked by `prodai deploy` for {self.name}: model references are resolved to the\n"
            f"# versions in this image ({', '.join(f'{self.model}/{v}' for v in self.versions)}).\n"
        )
        return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

    @property
    def config_hash(self) -> str:
        """A short digest of the container's config (an image label; a new hash rolls k8s pods)."""
        return hashlib.sha256(self.config_text().encode("utf-8")).hexdigest()[:16]

    def keys_text(self) -> str:
        """The API key hashes as a keys file (``keys: [...]``)."""
        import yaml

        return yaml.safe_dump({"keys": self.config_data["auth"]["keys"]}, sort_keys=False)


def _copy(data: Any) -> Any:
    import copy

    return copy.deepcopy(data)


def docker_name(text: str) -> str:
    """``text`` as a Docker repository/container name: lowercase letters, digits, '.', '_' and '-'."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return name or "model"


def plan_deployment(
    settings: Settings,
    *,
    model_ref: str | None = None,
    tag: str | None = None,
    name: str | None = None,
    gpu: bool | None = None,
    base_image: str | None = None,
) -> DeployPlan:
    """Resolve what to deploy: model versions (downloaded into the local cache), tag, name and config.

    Args:
        settings: The project's settings.
        model_ref: Serve this one model (``NAME``, ``NAME@ALIAS``, ``NAME/VERSION``) instead of the config's.
        tag: Image tag; default ``deploy.tag`` or ``prodai-<model>:<versions>[-cuda]``.
        name: Deployment name; default ``deploy.name`` or ``prodai-<model>``.
        gpu: CUDA variant; default ``deploy.gpu``. When every baked version is an ONNX export and no GPU is
            asked for, the ``onnx`` variant: an image without torch.
        base_image: Base image; default ``deploy.base_image``.

    Raises:
        UsageError: No model is configured, an A/B variant cannot be baked, or a GPU is asked for an ONNX version.
        ModelNotFoundError: A reference names an unknown model, version or alias.

    """
    from prodai_cli.registry import Registry

    config = settings.config
    registry = Registry(settings)
    warnings: list[str] = []
    environment: dict[str, str] = {}
    ab = config.ab
    use_ab = ab.enabled and model_ref is None
    variants: dict[str, int] = {}
    if use_ab:
        assert ab.model is not None  # the config validator guarantees it when ab.enabled
        model_name = ab.model
        for variant_name, arm in ab.variants.items():
            separator = "/" if isinstance(arm.version, int) else "@"
            info = registry.get_version(f"{model_name}{separator}{arm.version}")
            variants[variant_name] = info.version
            if not isinstance(arm.version, int):
                warnings.append(
                    f"ab.variants.{variant_name} names alias {arm.version!r}: baked as version {info.version}. "
                    "A container has no registry, so a mounted config must name versions (prodai ab-set writes them)"
                )
        primary = max(ab.variants.items(), key=lambda item: item[1].weight)[0]
        refs = [f"{model_name}/{v}" for v in sorted(set(variants.values()))]
        # A server without A/B support (or with ab switched off later) serves the main variant.
        environment["PRODAI_SERVING__MODEL"] = f"{model_name}/{variants[primary]}"
    else:
        text = model_ref or config.serving.model or config.registry.default_model
        if not text:
            raise UsageError(
                "No model to deploy",
                hint="Pass --model NAME@ALIAS, or set serving.model (or ab:) in prodai.yaml",
            )
        info = registry.get_version(text)
        model_name = info.name
        refs = [f"{info.name}/{info.version}"]
        environment["PRODAI_SERVING__MODEL"] = refs[0]
        if ab.enabled:
            # --model overrides an A/B config, in the mounted file too.
            environment["PRODAI_AB__ENABLED"] = "false"
    models_root = settings.state_dir / "models"
    models = [_baked(registry.resolve(ref), models_root) for ref in refs]
    version = variants[primary] if use_ab else models[0].version
    variant = image_variant(models, config.deploy.gpu if gpu is None else gpu)
    default_tag = f"prodai-{docker_name(model_name)}:{'-'.join(str(m.version) for m in models)}"
    image_tag = tag or config.deploy.tag or (default_tag + ("-cuda" if variant == "cuda" else ""))
    _check_tag(image_tag)
    deployment = name or config.deploy.name or f"prodai-{docker_name(model_name)}"
    data = _container_config(settings, environment["PRODAI_SERVING__MODEL"], variants, use_ab, variant)
    return DeployPlan(
        settings=settings,
        name=deployment,
        model=model_name,
        version=version,
        models=models,
        tag=image_tag,
        variant=variant,
        base_image=base_image or config.deploy.base_image,
        config_data=data,
        environment=environment,
        warnings=warnings,
    )


def image_variant(models: list[BakedModel], gpu: bool) -> Variant:
    """The image variant for these versions: ``onnx`` (no torch) when all are ONNX exports, else cpu or cuda.

    Raises:
        UsageError: A GPU is asked for and an ONNX version is among them (ONNX versions run on the CPU).

    """
    onnx = [f"{m.name}/{m.version}" for m in models if m.backend == "onnx"]
    if gpu and onnx:
        what = "is an ONNX version, which runs" if len(onnx) == 1 else "are ONNX versions, which run"
        raise UsageError(
            f"{', '.join(onnx)} {what} on the CPU only: a GPU image cannot serve {'it' if len(onnx) == 1 else 'them'}",
            hint="Deploy with --cpu, or deploy the torch version on the GPU",
        )
    if gpu:
        return "cuda"
    return "onnx" if onnx and len(onnx) == len(models) else "cpu"


def _baked(resolved: ResolvedModel, models_root: Path) -> BakedModel:
    from prodai_cli.runtime.model import detect_backend

    try:
        relative = resolved.path.resolve().relative_to(models_root.resolve())
    except ValueError:
        relative = Path(docker_name(resolved.info.name)) / str(resolved.info.version)
    return BakedModel(
        name=resolved.info.name,
        version=resolved.info.version,
        task=resolved.info.task,
        source=resolved.path,
        relative_dir=relative.as_posix(),
        backend=detect_backend(resolved.model_dir),
    )


def _check_tag(tag: str) -> None:
    # [registry[:port]/]repo[:tag], lowercase repository as Docker demands.
    if not re.fullmatch(r"[a-z0-9]+(?:[._/:-][a-z0-9]+)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?", tag):
        raise UsageError(f"Invalid image tag {tag!r}", hint="Use lowercase REPOSITORY[:TAG], e.g. prodai-sentiment:3")


def _container_config(
    settings: Settings, main_ref: str, variants: dict[str, int], use_ab: bool, variant: Variant
) -> dict[str, Any]:
    """The project's config with references resolved, bound to all interfaces, and no registry."""
    from prodai_cli.config import ProdaiConfig

    data: dict[str, Any] = settings.config.model_dump(mode="json")
    data["serving"]["host"] = "0.0.0.0"
    data["serving"]["port"] = CONTAINER_PORT
    data["serving"]["device"] = "cuda" if variant == "cuda" else "cpu"
    data["registry"] = {"tracking_uri": None, "artifact_root": None, "default_model": main_ref}
    data["serving"]["model"] = main_ref
    if use_ab:
        for variant_name, number in variants.items():
            data["ab"]["variants"][variant_name]["version"] = number
    else:
        data["ab"]["enabled"] = False
    data["auth"]["keys"] = [key.model_dump(mode="json") for key in _api_keys(settings)]
    data["auth"]["keys_file"] = None
    ProdaiConfig.model_validate(data)  # what the container reads must be valid, checked here not there
    return data


def _api_keys(settings: Settings) -> list[Any]:
    """The key records the config names (inline, or in its keys file), so a standalone image keeps them."""
    auth = settings.config.auth
    if auth.keys_file:
        from prodai_cli.keys import read_keys_file

        return list(read_keys_file(settings.resolve_path(auth.keys_file)))
    return list(auth.keys)


def runs_celery(settings: Settings) -> bool:
    """Whether the deployment's containers run jobs through Celery (job workers, or ``jobs.backend: celery``).

    Such an image also installs Celery and redis-py (``prodai worker``; the server's queue producer).
    """
    return settings.config.deploy.workers > 0 or settings.config.jobs.backend == "celery"


def worker_environment(redis_url: str | None = None) -> dict[str, str]:
    """The variables that hand a container's jobs to the workers: Celery, the shared jobs directory, Redis.

    Args:
        redis_url: The broker (None: the one the config names).

    """
    environment = {"PRODAI_JOBS__BACKEND": "celery", "PRODAI_JOBS__DIR": CONTAINER_JOBS_DIR}
    if redis_url is not None:
        environment["PRODAI_JOBS__REDIS_URL"] = redis_url
    return environment
