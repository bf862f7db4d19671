"""The MLflow model registry behind prodai: register, list, resolve, alias and delete model versions.

Callers get plain dataclasses, never MLflow types, so the rest of prodai does not care whether the
registry is the embedded SQLite store or a remote ``mlflow server``. Around that: a model directory is
validated before anything is stored (config, weights, a tokenizer that fits the embedding, one forward pass
with finite outputs), a resolved version is fetched into the checked local cache (:mod:`prodai_cli.model_cache`),
and :meth:`Registry.record_run` is the one MLflow run writer (load tests, ships, rollouts), with the version
tags that point at those runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prodai_cli import model_cache
from prodai_cli.errors import (
    InvalidModelError,
    ModelIntegrityError,
    ModelNotFoundError,
    RegistryError,
    UsageError,
    first_line,
)
from prodai_cli.extras import require_torch
from prodai_cli.refs import ModelRef, parse_model_ref

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from prodai_cli.config import Settings

Task = Literal["text-classification", "embedding"]
TASKS: tuple[str, ...] = ("text-classification", "embedding")
TASK_TAG = "prodai.task"
# Written beside a downloaded version; its presence marks a complete download.
VERSION_FILE = "version.json"
EXPERIMENT_NAME = "prodai"
# The transformers pipeline each prodai task is logged as, so MLflow's own tools can load it.
_PIPELINE_TASK = {"text-classification": "text-classification", "embedding": "feature-extraction"}
_log = logging.getLogger("prodai.registry")


def quiet_offline_env() -> None:
    """Keep heavy libraries offline and quiet: no hub calls, no telemetry, no progress bars on stdout."""
    for name, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_LOGGING_LEVEL": "ERROR",
    }.items():
        os.environ.setdefault(name, value)
    for logger in ("mlflow", "alembic", "transformers", "huggingface_hub"):
        logging.getLogger(logger).setLevel(logging.ERROR)


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version."""

    name: str
    version: int
    aliases: list[str]
    task: str | None
    description: str
    created: str
    source: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        """``models:/NAME/VERSION``."""
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (with ``uri``)."""
        data = asdict(self)
        data["uri"] = self.uri
        return data


@dataclass(frozen=True)
class RegisteredModelInfo:
    """A registered model and its aliases."""

    name: str
    description: str
    latest_version: int | None
    aliases: dict[str, int]
    created: str
    updated: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class ResolvedModel:
    """A version resolved to files on this machine."""

    info: ModelVersionInfo
    path: Path

    @property
    def model_dir(self) -> Path:
        """The directory holding config.json and weights."""
        return self.path / "model"

    @property
    def tokenizer_dir(self) -> Path:
        """The directory holding the tokenizer files."""
        tok = self.path / "components" / "tokenizer"
        return tok if tok.is_dir() else self.model_dir


def _iso(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def detect_task(model_dir: Path) -> str:
    """Guess the task from a model's config: a sequence-classification head means classification."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "embedding"
    architectures = config.get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "text-classification"
    return "embedding"


def validate_model_dir(model_dir: Path, task: str) -> Any:
    """Load a Hugging Face model directory as the pipeline prodai logs, or explain why it cannot be.

    Args:
        model_dir: Directory with config.json, weights and tokenizer files.
        task: ``text-classification`` or ``embedding``.

    Returns:
        The loaded transformers pipeline.

    Raises:
        InvalidModelError: The directory is missing or is not a loadable model and tokenizer.

    """
    if not model_dir.is_dir():
        raise InvalidModelError(f"{model_dir} is not a directory")
    if not (model_dir / "config.json").is_file():
        raise InvalidModelError(
            f"{model_dir} is not a Hugging Face model directory: it has no config.json",
            hint="Save the model with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)",
        )
    weights = [p for p in model_dir.iterdir() if p.suffix in {".safetensors", ".bin"}]
    if not weights:
        raise InvalidModelError(f"{model_dir} has no weights (*.safetensors or *.bin)")
    tokenizer_files = sorted(p.name for p in model_dir.iterdir() if p.name in TOKENIZER_FILES or p.suffix == ".model")
    if not tokenizer_files:
        # transformers would build a tokenizer of special tokens only from config.json, and it would "work".
        raise InvalidModelError(
            f"{model_dir} has no tokenizer files (one of {', '.join(sorted(TOKENIZER_FILES))})",
            hint="Save the tokenizer beside the model: tokenizer.save_pretrained(DIR)",
        )
    # Checking means loading the model and one forward pass: torch's job (a torch-free install cannot).
    require_torch("Registering a model directory (it is loaded and checked with one forward pass)")
    quiet_offline_env()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # transformers raises many types for a bad tokenizer
        raise InvalidModelError(f"{model_dir}: cannot load a tokenizer: {first_line(exc)}") from None
    try:
        auto = (
            transformers.AutoModelForSequenceClassification if task == "text-classification" else transformers.AutoModel
        )
        model = auto.from_pretrained(str(model_dir))
    except Exception as exc:
        raise InvalidModelError(f"{model_dir}: cannot load the model: {first_line(exc)}") from None
    _check_vocabulary(model_dir, tokenizer, model)
    pipeline = transformers.pipeline(_PIPELINE_TASK[task], model=model, tokenizer=tokenizer)
    _check_forward_pass(model_dir, pipeline, task)
    return pipeline


# Files a saved tokenizer leaves (any one is enough; *.model is a SentencePiece file).
TOKENIZER_FILES = frozenset({"tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model"})
SAMPLE_TEXT = "prodai checks that this model answers."


def _check_vocabulary(model_dir: Path, tokenizer: Any, model: Any) -> None:
    """The tokenizer must fit the model: every token id has an embedding row, and most rows have a token.

    A tokenizer larger than the embedding makes some texts crash the model (an id past the last row); one far
    smaller is another model's tokenizer, or one saved without its vocabulary (transformers then builds
    a tokenizer of its special tokens only, which "works" and answers nonsense). Models round their
    embedding up (to a multiple of 8, 64 or 128), so a tokenizer somewhat smaller is normal; fewer tokens
    than half the rows is not.
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if weight is None:
        return  # no token embedding to compare with (not a text model prodai serves)
    rows = int(weight.shape[0])
    size = len(tokenizer)
    if size > rows:
        raise InvalidModelError(
            f"{model_dir}: the tokenizer has {size:,} entries but the model's embedding has {rows:,} rows: "
            f"a text with a token id of {rows:,} or more would crash the model",
            hint="Register the tokenizer the model was trained with (tokenizer.save_pretrained(DIR) beside it)",
        )
    if size * 2 < rows:
        raise InvalidModelError(
            f"{model_dir}: the tokenizer has {size:,} entries but the model's embedding has {rows:,} rows: "
            "it is not this model's tokenizer (or it was saved without its vocabulary)",
            hint="Register the tokenizer the model was trained with (tokenizer.save_pretrained(DIR) beside it)",
        )


def _check_forward_pass(model_dir: Path, pipeline: Any, task: str) -> None:
    """One prediction on a sample text: the model must answer with finite numbers before it is stored."""
    import math

    try:
        output = pipeline(SAMPLE_TEXT)
    except Exception as exc:
        raise InvalidModelError(f"{model_dir}: a forward pass on a sample text failed: {first_line(exc)}") from None
    numbers: list[float] = []

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            collect(value.get("score"))
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers.append(float(value))

    collect(output)
    if not numbers:
        raise InvalidModelError(f"{model_dir}: a forward pass on a sample text returned nothing ({task})")
    if not all(math.isfinite(n) for n in numbers):
        raise InvalidModelError(
            f"{model_dir}: a forward pass on a sample text returned NaN or infinite values",
            hint="The weights are corrupt or were saved in a precision this model overflows in",
        )


class Registry:
    """prodai's view of an MLflow registry.

    Args:
        settings: Loaded settings; the tracking URI and the local cache come from there.

    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tracking_uri = settings.tracking_uri
        self._client: MlflowClient | None = None

    @property
    def is_local(self) -> bool:
        """True for the embedded SQLite/file store."""
        return self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri

    @property
    def client(self) -> MlflowClient:
        """A lazily created MLflow client bound to this registry."""
        if self._client is None:
            quiet_offline_env()
            if self.is_local:
                self.settings.state_dir.mkdir(parents=True, exist_ok=True)
            import mlflow
            from mlflow.tracking import MlflowClient

            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn MLflow and connection errors into RegistryError with the registry named."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            code = getattr(exc, "error_code", "")
            if code in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}:
                raise ModelNotFoundError(f"{what}: {first_line(exc)}") from None
            raise RegistryError(f"{what} failed on {self._display_uri}: {first_line(exc)}") from None
        except OSError as exc:
            raise RegistryError(f"{what}: cannot reach the registry at {self._display_uri}: {exc}") from None

    @property
    def _display_uri(self) -> str:
        from prodai_cli.config import mask_secrets

        return str(mask_secrets(self.tracking_uri))

    def experiment_id(self) -> str:
        """The ``prodai`` experiment runs are logged to; local stores keep artifacts under .prodai/."""
        client = self.client
        with self._errors("Preparing the prodai experiment"):
            experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
            if experiment is not None:
                return str(experiment.experiment_id)
            location = self.settings.artifact_root.resolve().as_uri() if self.is_local else None
            try:
                return str(client.create_experiment(EXPERIMENT_NAME, artifact_location=location))
            except Exception:
                # Another process created it between our lookup and create.
                experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
                if experiment is None:
                    raise
                return str(experiment.experiment_id)

    # ------------------------------------------------------------------------------------ writes
    def register(
        self,
        model_dir: Path,
        name: str,
        *,
        task: str | None = None,
        aliases: list[str] | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> ModelVersionInfo:
        """Log a Hugging Face model directory as a new version of ``name``.

        The directory is loaded and checked first, so a bad directory writes nothing to the registry.

        Args:
            model_dir: Directory with config.json, weights and tokenizer.
            name: Registered model name.
            task: ``text-classification`` or ``embedding``; detected from the config when None.
            aliases: Aliases to point at the new version.
            description: Version description.
            tags: Extra version tags.

        Returns:
            The new version.

        """
        parse_model_ref(name)  # one syntax: a name must not contain '@' or '/'
        if "@" in name or "/" in name:
            raise UsageError(f"Model name {name!r} may not contain '@' or '/'")
        task = task or detect_task(model_dir)
        if task not in TASKS:
            raise UsageError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}")
        for alias in aliases or []:
            validate_alias(alias)
        pipeline = validate_model_dir(model_dir, task)
        experiment_id = self.experiment_id()
        import mlflow
        import mlflow.transformers

        all_tags = {TASK_TAG: task, **(tags or {})}
        with self._errors(f"Registering {name}"):
            # MLflow prints "Successfully registered model ..." (stderr) and "View run ..." (stdout, remote
            # servers) itself; prodai reports once, and stdout must stay clean for --json.
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
                mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{name}"),
            ):
                mlflow.set_tags({"prodai.action": "register", TASK_TAG: task})
                info = mlflow.transformers.log_model(
                    transformers_model=pipeline,
                    name="model",
                    task=_PIPELINE_TASK[task],
                    # Explicit requirements: MLflow's inference otherwise probes for torchvision and the hub.
                    pip_requirements=["transformers", "torch"],
                    registered_model_name=name,
                )
            version = int(info.registered_model_version)
            client = self.client
            for key, value in all_tags.items():
                client.set_model_version_tag(name, str(version), key, value)
            if description:
                client.update_model_version(name, str(version), description=description)
            for alias in aliases or []:
                client.set_registered_model_alias(name, alias, str(version))
        return self._cache_new_version(name, version)

    def register_files(
        self,
        files_dir: Path,
        name: str,
        *,
        task: str,
        aliases: list[str] | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> ModelVersionInfo:
        """Log a directory prodai built (an ONNX export: ``model/``, ``components/``) as a new version of ``name``.

        Unlike :meth:`register` nothing is loaded here: the caller has validated the files. They are logged
        as the artifacts of one run (``prodai.action=export``) and the version points at them; it is cached
        and its files' digest recorded exactly as for a registered transformers model.

        Returns:
            The new version.

        """
        if task not in TASKS:
            raise UsageError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}")
        for alias in aliases or []:
            validate_alias(alias)
        experiment_id = self.experiment_id()
        client = self.client
        from mlflow.exceptions import MlflowException

        with self._errors(f"Registering {name}"):
            run = client.create_run(
                experiment_id, run_name=f"export-{name}", tags={"prodai.action": "export", TASK_TAG: task}
            )
            client.log_artifacts(run.info.run_id, str(files_dir), artifact_path="model")
            client.set_terminated(run.info.run_id, "FINISHED")
            try:
                client.get_registered_model(name)
            except MlflowException:
                client.create_registered_model(name)
            created = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
            version = int(created.version)
            for key, value in {TASK_TAG: task, **(tags or {})}.items():
                client.set_model_version_tag(name, str(version), key, value)
            if description:
                client.update_model_version(name, str(version), description=description)
            for alias in aliases or []:
                client.set_registered_model_alias(name, alias, str(version))
        return self._cache_new_version(name, version)

    def _cache_new_version(self, name: str, version: int) -> ModelVersionInfo:
        # Cache the version now and record its files' digest on it: every later use of the cache (serve,
        # batch, a deploy image) is checked against these hashes, and any download against the digest.
        target = self._cache_dir(name, version)
        digest = self._download(self.get_version(ModelRef(name=name, version=version)), target, None)
        self.set_version_tags(name, version, {model_cache.DIGEST_TAG: digest})
        registered = self.get_version(ModelRef(name=name, version=version))
        # The sidecar says what the registry says now (with the digest tag); it is not hashed.
        (target / VERSION_FILE).write_text(json.dumps(registered.to_dict(), indent=2), encoding="utf-8")
        return registered

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        """Point ``alias`` at ``version``; return the version it pointed at before (None if new)."""
        validate_alias(alias)
        current = self.get_version(ModelRef(name=name, version=version))
        previous: int | None = None
        with self._errors(f"Moving alias {alias}"):
            from mlflow.exceptions import MlflowException

            try:
                previous = int(self.client.get_model_version_by_alias(name, alias).version)
            except MlflowException:
                previous = None
            self.client.set_registered_model_alias(name, alias, str(current.version))
        return previous

    def delete_alias(self, name: str, alias: str) -> int:
        """Remove ``alias`` from ``name``; return the version it pointed at.

        Raises:
            ModelNotFoundError: No such model or alias.

        """
        validate_alias(alias)
        version = self.get_version(ModelRef(name=name, alias=alias)).version
        with self._errors(f"Deleting alias {name}@{alias}"):
            self.client.delete_registered_model_alias(name, alias)
        return version

    def delete_version(self, name: str, version: int) -> list[str]:
        """Delete version ``version`` of ``name`` (and its local cached copy); return the aliases it had.

        MLflow drops the aliases of a deleted version with it; callers that must not lose an alias check
        first (see :mod:`prodai_cli.model_deletion`).

        Raises:
            ModelNotFoundError: No such model or version.

        """
        import shutil

        info = self.get_version(ModelRef(name=name, version=version))
        with self._errors(f"Deleting {name}/{version}"):
            self.client.delete_model_version(name, str(version))
        shutil.rmtree(self._cache_dir(name, version), ignore_errors=True)
        return list(info.aliases)

    def set_version_tags(self, name: str, version: int, tags: dict[str, str]) -> None:
        """Set tags on a model version (evidence of load tests, ship reports)."""
        with self._errors(f"Tagging {name}/{version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, str(version), key, value)

    # ------------------------------------------------------------------------------------ reads
    def list_models(self) -> list[RegisteredModelInfo]:
        """Every registered model, sorted by name."""
        with self._errors("Listing models"):
            models = list(self.client.search_registered_models(max_results=1000))
        out = []
        for model in models:
            with self._errors(f"Reading {model.name}"):
                versions = self.client.search_model_versions(f"name='{_quote(model.name)}'")
            latest = max((int(v.version) for v in versions), default=None)
            out.append(
                RegisteredModelInfo(
                    name=model.name,
                    description=model.description or "",
                    latest_version=latest,
                    aliases={k: int(v) for k, v in (model.aliases or {}).items()},
                    created=_iso(model.creation_timestamp),
                    updated=_iso(model.last_updated_timestamp),
                )
            )
        return sorted(out, key=lambda m: m.name)

    def list_versions(self, name: str) -> list[ModelVersionInfo]:
        """Every version of ``name``, newest first."""
        self._require_model(name)
        with self._errors(f"Listing versions of {name}"):
            versions = self.client.search_model_versions(f"name='{_quote(name)}'")
        aliases = self._aliases_by_version(name)
        infos = [self._info(v, aliases) for v in versions]
        return sorted(infos, key=lambda v: v.version, reverse=True)

    def _require_model(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException:
            known = [m.name for m in self.client.search_registered_models(max_results=1000)]
            hint = f"Known models: {', '.join(sorted(known))}" if known else "The registry has no models yet"
            raise ModelNotFoundError(f"Unknown model {name!r}", hint=hint) from None

    def get_version(self, ref: ModelRef | str) -> ModelVersionInfo:
        """Resolve a reference to a version without downloading it.

        Raises:
            ModelNotFoundError: Unknown model, version or alias; the message says which.

        """
        if isinstance(ref, str):
            ref = parse_model_ref(ref)
        fast = self._sqlite_version(ref)
        if fast is not None:
            return fast
        model = self._require_model(ref.name)
        from mlflow.exceptions import MlflowException

        client = self.client
        try:
            if ref.alias:
                version = client.get_model_version_by_alias(ref.name, ref.alias)
            elif ref.version is not None:
                version = client.get_model_version(ref.name, str(ref.version))
            else:
                versions = client.search_model_versions(f"name='{_quote(ref.name)}'")
                if not versions:
                    raise ModelNotFoundError(f"Model {ref.name!r} has no versions")
                version = max(versions, key=lambda v: int(v.version))
        except MlflowException:
            if ref.alias:
                aliases = ", ".join(sorted(model.aliases or {})) or "none"
                raise ModelNotFoundError(
                    f"Model {ref.name!r} has no alias {ref.alias!r}", hint=f"Its aliases: {aliases}"
                ) from None
            raise ModelNotFoundError(f"Model {ref.name!r} has no version {ref.version}") from None
        return self._info(version, self._aliases_by_version(ref.name, model))

    def resolve(self, ref: ModelRef | str) -> ResolvedModel:
        """Resolve a reference and make its files available locally (cached per version, checked per use).

        Versions are immutable, so a version downloaded once is reused from ``.prodai/models/``; resolving
        ``NAME/VERSION`` that is already cached never contacts the registry (nor imports mlflow), which is how
        a container with baked-in models serves without any registry. Cached files are checked against the
        SHA-256 manifest written when they were cached (and, when the registry is consulted, against the
        digest recorded at registration); a mismatch downloads the version again.

        Raises:
            ModelIntegrityError: The cached files do not match their manifest and cannot be fetched again,
                or a fresh download does not match what was registered.

        """
        if isinstance(ref, str):
            ref = parse_model_ref(ref)
        problems: list[str] = []
        if ref.version is not None:
            cached = self.cached(ref.name, ref.version, verify=False)
            if cached is not None:
                problems = model_cache.check_files(cached.path)
                if not problems:
                    return cached
        try:
            info = self.get_version(ref)
        except RegistryError as exc:
            if problems:
                raise _integrity_error(ref.name, ref.version, problems, refetch=exc) from None
            raise
        expected = info.tags.get(model_cache.DIGEST_TAG)
        target = self._cache_dir(info.name, info.version)
        if (target / VERSION_FILE).is_file():
            problems = model_cache.check_files(target, expected)
            if not problems:
                return ResolvedModel(info=info, path=target)
            _log.warning(
                "The cached files of %s/%s do not match their manifest (%s): downloading them again",
                info.name,
                info.version,
                "; ".join(problems[:3]),
            )
        try:
            self._download(info, target, expected)
        except RegistryError as exc:
            if problems:
                raise _integrity_error(info.name, info.version, problems, refetch=exc) from None
            raise
        return ResolvedModel(info=info, path=target)

    def _download(self, info: ModelVersionInfo, target: Path, expected_digest: str | None) -> str:
        """Download ``info`` into ``target`` (replacing it) with its manifest; return the manifest's digest."""
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            self.client  # noqa: B018 - binds mlflow's tracking and registry URIs to this registry
            import mlflow

            with self._errors(f"Downloading {info.uri}"):
                mlflow.artifacts.download_artifacts(
                    artifact_uri=info.uri, dst_path=str(staging), tracking_uri=self.tracking_uri
                )
            digest = model_cache.write_manifest(staging)
            if expected_digest and digest != expected_digest:
                raise ModelIntegrityError(
                    f"The files of {info.uri} in the registry do not match the hashes recorded when it was registered",
                    hint="The artifact store was changed after registration; register the model again",
                )
            # The sidecar is written last: its presence marks a complete download.
            (staging / VERSION_FILE).write_text(json.dumps(info.to_dict(), indent=2), encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return digest

    def cached(self, name: str, version: int, *, verify: bool = True) -> ResolvedModel | None:
        """The locally cached files of ``name`` version ``version``, or None when not downloaded.

        Args:
            name: Registered model name.
            version: Version number.
            verify: Check the files against their manifest first.

        Raises:
            ModelIntegrityError: ``verify`` and the files do not match their manifest.

        """
        target = self._cache_dir(name, version)
        try:
            data = json.loads((target / VERSION_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        data.pop("uri", None)
        if verify:
            problems = model_cache.check_files(target)
            if problems:
                raise _integrity_error(name, version, problems)
        return ResolvedModel(info=ModelVersionInfo(**data), path=target)

    def _sqlite_version(self, ref: ModelRef) -> ModelVersionInfo | None:
        """The version read straight from the embedded SQLite store (no MLflow import), or None."""
        database = model_cache.sqlite_path(self.tracking_uri)
        if database is None:
            return None
        row = model_cache.lookup_version(database, ref.name, version=ref.version, alias=ref.alias)
        if row is None:
            return None  # not found or not understood: MLflow answers, with its precise errors
        return ModelVersionInfo(**model_cache.as_version_fields(row), created=_iso(row.created_ms))

    def _cache_dir(self, name: str, version: int) -> Path:
        return self.settings.state_dir / "models" / path_safe(name) / str(version)

    def _aliases_by_version(self, name: str, model: Any = None) -> dict[int, list[str]]:
        # search_model_versions leaves aliases empty on some stores; the registered model has them all.
        model = model if model is not None else self._require_model(name)
        by_version: dict[int, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(int(version), []).append(alias)
        return by_version

    def _info(self, version: Any, aliases: dict[int, list[str]] | None = None) -> ModelVersionInfo:
        tags = dict(version.tags or {})
        number = int(version.version)
        return ModelVersionInfo(
            name=version.name,
            version=number,
            aliases=sorted(set(version.aliases or []) | set((aliases or {}).get(number, []))),
            task=tags.get(TASK_TAG),
            description=version.description or "",
            created=_iso(version.creation_timestamp),
            source=version.source or "",
            run_id=version.run_id,
            tags=tags,
        )

    def record_run(
        self,
        run_name: str,
        *,
        tags: dict[str, str],
        metrics: dict[str, float] | None = None,
        params: dict[str, str] | None = None,
        artifacts: Sequence[Path] = (),
        artifact_path: str | None = None,
        failed: bool = False,
        what: str = "Recording a run",
    ) -> str:
        """The one MLflow run writer (experiment ``prodai``): load tests, ships and rollouts record through it.

        Args:
            run_name: The run's name.
            tags: Run tags (``prodai.action`` says what it records).
            metrics: Logged once each, at step 0.
            params: Logged as text (cut at 6,000 characters, MLflow's limit).
            artifacts: Files or directories logged under ``artifact_path`` (missing ones are skipped).
            artifact_path: Where in the run's artifacts they go.
            failed: End the run FAILED instead of FINISHED.
            what: The action named in an error.

        Returns:
            The run id.

        Raises:
            RegistryError: The tracking store refused.

        """
        import time

        from mlflow.entities import Metric, Param

        experiment_id = self.experiment_id()
        client = self.client
        now_ms = int(time.time() * 1000)
        with self._errors(what):
            run = client.create_run(experiment_id, run_name=run_name, tags=tags)
            run_id = str(run.info.run_id)
            client.log_batch(
                run_id,
                metrics=[Metric(key, float(value), now_ms, 0) for key, value in (metrics or {}).items()],
                params=[Param(key, str(value)[:6000]) for key, value in (params or {}).items()],
            )
            for path in artifacts:
                if path.is_dir():
                    client.log_artifacts(run_id, str(path), artifact_path=artifact_path)
                elif path.is_file():
                    client.log_artifact(run_id, str(path), artifact_path=artifact_path)
            client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
        return run_id

    def log_loadtest(
        self,
        name: str,
        version: int,
        *,
        passed: bool,
        metrics: dict[str, float],
        params: dict[str, str],
        version_tags: dict[str, str] | None = None,
        report_dir: Path | None = None,
    ) -> str:
        """Record a load test of a version: an MLflow run, and tags on the version pointing at it.

        The run (experiment ``prodai``, tags ``prodai.action=loadtest``, ``prodai.model``, ``prodai.version``,
        ``prodai.loadtest.passed``) holds ``metrics``, ``params`` and the report directory as artifacts under
        ``loadtest/``. The version gets ``prodai.loadtest.passed`` (``true``/``false``),
        ``prodai.loadtest.run_id``, ``prodai.loadtest.at`` (ISO 8601, UTC) and ``version_tags``, so the last
        load test of a version is one ``get_version`` away.

        Returns:
            The MLflow run id.

        """
        info = self.get_version(ModelRef(name=name, version=version))
        passed_text = "true" if passed else "false"
        run_id = self.record_run(
            f"loadtest-{name}-v{info.version}",
            tags={
                "prodai.action": "loadtest",
                "prodai.model": name,
                "prodai.version": str(info.version),
                "prodai.loadtest.passed": passed_text,
            },
            metrics=metrics,
            params=params,
            artifacts=[report_dir] if report_dir is not None else [],
            artifact_path="loadtest",
            what=f"Logging a load test of {name}/{info.version}",
        )
        tags = {
            "prodai.loadtest.passed": passed_text,
            "prodai.loadtest.run_id": run_id,
            "prodai.loadtest.at": datetime.now(UTC).isoformat(timespec="seconds"),
            **(version_tags or {}),
        }
        self.set_version_tags(name, info.version, tags)
        return run_id


def _integrity_error(
    name: str, version: int | None, problems: list[str], refetch: BaseException | None = None
) -> ModelIntegrityError:
    shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
    where = f"{name}/{version}" if version is not None else name
    hint = "Delete the directory and resolve the version again (prodai models resolve NAME/VERSION)"
    if refetch is not None:
        hint = f"Fetching it again from the registry failed ({first_line(refetch)}). {hint}"
    return ModelIntegrityError(
        f"The cached files of {where} do not match the hashes recorded when they were cached: {shown}", hint=hint
    )


def validate_alias(alias: str) -> None:
    """Refuse an alias MLflow would reject or that reads like a version (``v1``).

    Raises:
        UsageError: The alias is not valid.

    """
    import re

    from prodai_cli.config import AB_ALIAS_PATTERN, AB_VERSION_PATTERN

    if not re.fullmatch(AB_ALIAS_PATTERN, alias) or re.fullmatch(AB_VERSION_PATTERN, alias):
        raise UsageError(
            f"Invalid alias {alias!r}",
            hint="Aliases start with a letter or '_', hold letters, digits, '_' or '-', and may not look like v1",
        )


def _quote(name: str) -> str:
    return name.replace("'", "\\'")


def path_safe(name: str) -> str:
    """``name`` (a model name) as one path component: anything but letters, digits, ``-_.`` becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
