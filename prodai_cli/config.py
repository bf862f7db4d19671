"""prodai.yaml: the pydantic model of the project's one config file, its loader and its atomic editor.

Loading keeps ruamel's line information so a validation error names the key path *and* the line
(``serving.port: Input should be less than or equal to 65535 (prodai.yaml line 7)``). Editing goes
through :func:`edit_config`, which round-trips the YAML (the user's comments and layout survive),
validates the result before anything is written, and replaces the file atomically under a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prodai_cli.errors import ConfigError

CONFIG_FILENAME = "prodai.yaml"
STATE_DIRNAME = ".prodai"
ENV_CONFIG = "PRODAI_CONFIG"
ENV_PREFIX = "PRODAI_"
# Short aliases for the overrides people set most; any key can be set as PRODAI_SECTION__KEY.
ENV_ALIASES = {
    "PRODAI_TRACKING_URI": ("registry", "tracking_uri"),
    "PRODAI_REDIS_URL": ("redis_url",),
}
# Variables with the prefix that are not config overrides.
ENV_RESERVED = {"PRODAI_CONFIG", "PRODAI_DEBUG"}

Device = str  # auto | cpu | cuda | cuda:N | mps; validated by the runtime where the hardware is known
Precision = Literal["fp32", "bf16", "fp16"]
Scope = Literal["predict", "admin"]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RegistryConfig(Section):
    """Where model versions live."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI. Empty: a SQLite store in .prodai/mlflow.db beside this file. "
        "Example: http://mlflow.internal:5000",
    )
    artifact_root: str | None = Field(
        None, description="Where a local store keeps artifacts. Empty: .prodai/artifacts"
    )
    default_model: str | None = Field(
        None, description="Model reference used when a command gets no --model (NAME, NAME@ALIAS, NAME/VERSION)"
    )


class ServingConfig(Section):
    """The model server (prodai serve, and the server inside deployed images)."""

    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 to accept remote clients")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes; each loads the model")
    model: str | None = Field(
        None, description="Model reference to serve when ab is off. Empty: registry.default_model"
    )
    device: Device = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    precision: Precision = Field("fp32", description="fp32, bf16 or fp16 (fp16 on GPU only)")
    max_batch_tokens: int = Field(8192, ge=64, description="Token budget of one micro-batch (padded tokens)")
    max_batch_size: int = Field(64, ge=1, description="Most requests gathered into one forward pass")
    max_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="Extra time to wait for a batch to fill; 0 takes what is queued"
    )
    max_queue: int = Field(1024, ge=1, description="Queued texts before requests get 503 with Retry-After")
    request_timeout_s: float = Field(30.0, gt=0, description="Per-request inference timeout (504 past it)")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Request bodies larger than this get 413")
    max_text_chars: int = Field(10_000, ge=1, description="Longer texts get 422")
    max_batch_items: int = Field(64, ge=1, description="Most texts in one /predict/batch request")
    grace_period_s: float = Field(10.0, ge=0, description="On SIGTERM, time in-flight requests get to finish")
    log_bodies: bool = Field(False, description="Log request bodies (off: bodies may hold personal data)")


class ABVariantConfig(Section):
    """One arm of an A/B split."""

    version: str = Field(description="Registry version number or alias of the model")
    weight: float = Field(ge=0, le=1, description="Share of traffic, 0..1; all weights sum to 1")


class BreakerConfig(Section):
    """Per-version circuit breaker."""

    consecutive_failures: int = Field(5, ge=1, description="Open after this many failures in a row")
    failure_rate: float = Field(0.5, gt=0, le=1, description="...or when this share of the window failed")
    window: int = Field(20, ge=1, description="Requests the failure rate is measured over")
    reset_timeout_s: float = Field(10.0, gt=0, description="Seconds open before a half-open probe")


class CascadeConfig(Section):
    """Cost routing: ask a small model first, escalate when it is unsure."""

    enabled: bool = Field(False, description="Turn the cascade on")
    small: str | None = Field(None, description="Variant name of the cheap model")
    large: str | None = Field(None, description="Variant name of the model to escalate to")
    threshold: float = Field(0.8, ge=0, le=1, description="Escalate when the small model's confidence is below")


class ABConfig(Section):
    """Sticky A/B routing between versions of one model."""

    enabled: bool = Field(False, description="Route by the variants below instead of serving.model")
    model: str | None = Field(None, description="Registered model name the variants belong to")
    variants: dict[str, ABVariantConfig] = Field(default_factory=dict, description="name -> {version, weight}")
    salt: str = Field("prodai", description="Hash salt; changing it reshuffles every user")
    user_header: str = Field("X-User-ID", description="Request header that identifies a user")
    fallback: str | None = Field(None, description="Variant that serves when one fails. Empty: highest weight")
    breaker: BreakerConfig = Field(default_factory=BreakerConfig, description="Circuit breaker per version")
    cascade: CascadeConfig = Field(default_factory=CascadeConfig, description="Optional small-then-large routing")

    @field_validator("variants")
    @classmethod
    def _weights_sum_to_one(cls, variants: dict[str, ABVariantConfig]) -> dict[str, ABVariantConfig]:
        if variants:
            total = sum(v.weight for v in variants.values())
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"weights must sum to 1, got {total:g}")
        return variants


class CacheConfig(Section):
    """Response cache."""

    enabled: bool = Field(True, description="Answer repeated inputs from the cache")
    backend: Literal["memory", "redis"] = Field("memory", description="memory (per process) or redis (shared)")
    ttl_seconds: int = Field(3600, gt=0, description="How long an entry lives")
    max_entries: int = Field(10_000, ge=1, description="memory backend: LRU bound")
    max_entry_bytes: int = Field(65_536, ge=1, description="Larger responses are not cached")


class LimitRule(Section):
    """A rate: ``rate`` requests per ``period_s`` seconds with a burst allowance."""

    rate: int = Field(ge=1, description="Requests allowed per period")
    period_s: float = Field(1.0, gt=0, description="Period in seconds")
    burst: int = Field(0, ge=0, description="Extra requests allowed at once above the steady rate")


class RateLimitConfig(Section):
    """Rate limits per API key and per client IP."""

    enabled: bool = Field(True, description="Enforce the limits below")
    backend: Literal["memory", "redis"] = Field("memory", description="memory (per process) or redis (shared)")
    per_key: LimitRule = Field(
        default_factory=lambda: LimitRule(rate=100, period_s=1.0, burst=50), description="Limit per API key"
    )
    per_ip: LimitRule = Field(
        default_factory=lambda: LimitRule(rate=50, period_s=1.0, burst=25), description="Limit per client IP"
    )
    auth_failures: LimitRule = Field(
        default_factory=lambda: LimitRule(rate=5, period_s=60.0, burst=0),
        description="Stricter limit on failed authentication attempts per IP",
    )


class ApiKeyRecord(Section):
    """A stored API key: only its hash, never the key."""

    name: str = Field(description="Unique key name")
    hash: str = Field(description="sha256 of the key, hex")
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["predict"]), description="Grants")
    created: str | None = Field(None, description="ISO timestamp")
    expires: str | None = Field(None, description="ISO timestamp; empty never expires")
    revoked: bool = Field(False, description="A revoked key is refused")


class AuthConfig(Section):
    """API keys."""

    enabled: bool = Field(True, description="Require X-API-Key; off only for local development")
    header: str = Field("X-API-Key", description="Header that carries the key")
    keys_file: str | None = Field(None, description="Keep key hashes in this YAML file instead of here")
    keys: list[ApiKeyRecord] = Field(default_factory=list, description="Key hashes (prodai keys create)")


class MonitoringConfig(Section):
    """Metrics and logs."""

    metrics: bool = Field(True, description="Expose Prometheus metrics on /metrics")
    log_format: Literal["json", "text"] = Field("json", description="json for machines, text for people")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")


class DeployConfig(Section):
    """Container images and where they run."""

    target: Literal["docker", "compose", "k8s"] = Field("docker", description="docker, compose or k8s")
    base_image: str = Field("python:3.11-slim", description="Base of the runtime image")
    tag: str | None = Field(None, description="Image tag. Empty: prodai-<model>:<version>")
    port: int = Field(8080, ge=1, le=65535, description="Host port of the docker target")
    replicas: int = Field(1, ge=1, description="compose and k8s replicas")
    gpu: bool = Field(False, description="Request a GPU and use the CUDA image variant")
    readiness_timeout_s: float = Field(120.0, gt=0, description="How long deploy waits for /health/ready")


class BatchConfig(Section):
    """prodai batch defaults."""

    batch_size: int | Literal["auto"] = Field("auto", description="auto (calibrated token budget) or texts per batch")
    max_tokens: int | None = Field(None, ge=1, description="Truncate texts to this many tokens. Empty: the model's max")
    device: Device = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    precision: Precision = Field("fp32", description="fp32, bf16 or fp16 (fp16 on GPU only)")
    text_field: str = Field("text", description="JSON field holding the text")
    id_field: str = Field("id", description="JSON field holding the id; the line number when absent")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Fail the job when more lines than this are bad")


class LoadtestConfig(Section):
    """prodai loadtest defaults."""

    users: int = Field(10, ge=1, description="Concurrent simulated users")
    spawn_rate: float = Field(10.0, gt=0, description="Users started per second")
    duration: str = Field("30s", description="Run time, e.g. 30s, 2m")
    warmup: str = Field("0s", description="Leading time excluded from the SLOs")
    slo: list[str] = Field(
        default_factory=lambda: ["p95 < 500ms", "error_rate < 1%"], description="Gates the run must pass"
    )


class ProdaiConfig(Section):
    """The whole prodai.yaml."""

    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="Model registry (MLflow)")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="Model server")
    ab: ABConfig = Field(default_factory=ABConfig, description="A/B routing between model versions")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="Response cache")
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig, description="Rate limits")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys")
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig, description="Metrics and logs")
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="Images and deployments")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Batch inference")
    loadtest: LoadtestConfig = Field(default_factory=LoadtestConfig, description="Load tests")
    redis_url: str | None = Field(
        None, description="Redis shared by cache and rate limits, e.g. redis://127.0.0.1:6379/0. Empty: in-memory"
    )


@dataclass(frozen=True)
class Settings:
    """A validated config plus where it came from.

    Attributes:
        config: The validated model.
        path: The file it was read from, or None when running on embedded defaults.
        root: The directory relative paths and the ``.prodai`` state directory hang off.

    """

    config: ProdaiConfig
    path: Path | None
    root: Path

    @property
    def state_dir(self) -> Path:
        """``.prodai/`` beside the config (created on demand by whoever writes there)."""
        return self.root / STATE_DIRNAME

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI: the configured one, or the embedded SQLite store."""
        uri = self.config.registry.tracking_uri
        if uri:
            return uri
        return f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        """Where a local registry keeps artifacts."""
        root = self.config.registry.artifact_root
        return self.resolve_path(root) if root else self.state_dir / "artifacts"

    def resolve_path(self, value: str) -> Path:
        """Resolve a path from the config relative to the config's directory."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.root / path


# --------------------------------------------------------------------------------------------- loading


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Locate prodai.yaml: ``--config``, then ``$PRODAI_CONFIG``, then ``./prodai.yaml``.

    An explicit path (option or variable) that does not exist is an error; a missing ``./prodai.yaml``
    means "embedded defaults".
    """
    for source, value in (("--config", explicit), (ENV_CONFIG, os.environ.get(ENV_CONFIG))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(f"Config file {path} (from {source}) does not exist")
            return path
    default = Path.cwd() / CONFIG_FILENAME
    return default if default.is_file() else None


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def _line_of(doc: Any, loc: tuple[str | int, ...]) -> int | None:
    """1-based line of the deepest node on ``loc`` that ruamel recorded a position for."""
    line: int | None = None
    node = doc
    for part in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(part, int) and isinstance(node, list):
                if lc is not None:
                    line = lc.item(part)[0] + 1
                node = node[part]
            elif isinstance(node, dict) and part in node:
                if lc is not None:
                    line = lc.key(part)[0] + 1
                node = node[part]
            else:
                break
        except (KeyError, IndexError, TypeError):
            break
    return line


def _format_validation_error(exc: ValidationError, doc: Any, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "Unknown key (not part of prodai.yaml's schema)"
        where = _line_of(doc, loc) if doc is not None else None
        suffix = f" ({source} line {where})" if where else f" ({source})"
        lines.append(f"{key}: {msg}{suffix}")
    return "\n".join(lines)


def _env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``PRODAI_SECTION__KEY=value`` (and the short aliases) as a nested dict; values parsed as YAML."""
    import yaml as pyyaml

    environ = dict(os.environ if environ is None else environ)
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        if name in ENV_ALIASES:
            path: tuple[str, ...] = ENV_ALIASES[name]
        elif "__" in name:
            path = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        else:
            continue
        try:
            value = pyyaml.safe_load(raw) if raw else None
        except pyyaml.YAMLError:
            value = raw
        target = overrides
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_config_text(text: str, source: str = CONFIG_FILENAME, *, env: bool = False) -> ProdaiConfig:
    """Validate YAML text as a prodai config.

    Args:
        text: The YAML document.
        source: File name used in error messages.
        env: Apply ``PRODAI_*`` environment overrides on top.

    Returns:
        The validated config.

    Raises:
        ConfigError: Malformed YAML or a value that fails validation; the message names key and line.

    """
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        doc = _yaml().load(text) if text.strip() else None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {exc.problem}") from None
    except YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(doc).__name__}")
    data = _plain(doc)
    if env:
        data = _merge(data, _env_overrides())
    try:
        return ProdaiConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"Invalid configuration:\n{_format_validation_error(exc, doc, source)}",
            hint="Run `prodai config validate` after fixing; `prodai init` writes a documented example",
        ) from None


def _plain(node: Any) -> Any:
    """Ruamel's commented containers as plain dicts and lists (pydantic wants plain data)."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def load_settings(explicit: str | os.PathLike[str] | None = None) -> Settings:
    """Find, read and validate the config (with environment overrides).

    Args:
        explicit: The ``--config`` option, if given.

    Returns:
        Settings on the file found, or on embedded defaults rooted at the working directory.

    """
    path = find_config_path(explicit)
    if path is None:
        overrides = _env_overrides()
        try:
            config = ProdaiConfig.model_validate(overrides)
        except ValidationError as exc:
            raise ConfigError(
                f"Invalid configuration from the environment:\n{_format_validation_error(exc, None, 'env')}"
            ) from None
        return Settings(config=config, path=None, root=Path.cwd())
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}") from None
    config = parse_config_text(text, source=path.name, env=True)
    return Settings(config=config, path=path.resolve(), root=path.resolve().parent)


# --------------------------------------------------------------------------------------------- writing


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old file or the new one, never a mix.

    Writes a temp file in the same directory, fsyncs it, ``os.replace`` s it over the target and fsyncs
    the directory, keeping the original file's permissions.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (serialises concurrent editors)."""
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class ConfigEdit:
    """The outcome of :func:`edit_config`."""

    before: str
    after: str
    config: ProdaiConfig
    written: bool


def edit_config(path: Path, mutate: Callable[[Any], None], *, dry_run: bool = False) -> ConfigEdit:
    """Edit prodai.yaml in place, keeping comments and layout; validate, then write atomically.

    Args:
        path: The config file (created empty if missing).
        mutate: Called with the round-trip YAML document (a ruamel ``CommentedMap``) to change it.
        dry_run: Validate and compute the new text but do not write it.

    Returns:
        The text before and after and the validated new config.

    Raises:
        ConfigError: The edited document fails validation; nothing is written.

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path):
        before = path.read_text(encoding="utf-8") if path.exists() else ""
        yaml = _yaml()
        doc = yaml.load(before) if before.strip() else None
        if doc is None:
            from ruamel.yaml.comments import CommentedMap

            doc = CommentedMap()
        mutate(doc)
        buffer = io.StringIO()
        yaml.dump(doc, buffer)
        after = buffer.getvalue()
        config = parse_config_text(after, source=path.name)
        if not dry_run and after != before:
            write_atomic(path, after)
        return ConfigEdit(before=before, after=after, config=config, written=not dry_run and after != before)


# --------------------------------------------------------------------------------------------- rendering

_SECRET_WORDS = ("password", "secret", "token")


def mask_secrets(data: Any, key: str = "") -> Any:
    """Mask values that are secrets (key hashes, passwords in URLs) for display."""
    from urllib.parse import urlsplit, urlunsplit

    if isinstance(data, dict):
        return {k: mask_secrets(v, k) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_secrets(v, key) for v in data]
    if isinstance(data, str):
        if key == "hash" or any(word in key.lower() for word in _SECRET_WORDS):
            return "****"
        if "://" in data and "@" in data:
            parts = urlsplit(data)
            if parts.password:
                netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
                return urlunsplit(parts._replace(netloc=netloc))
    return data


def render_default_config() -> str:
    """The commented prodai.yaml that ``prodai init`` writes (and prodai.yaml.example holds).

    Generated from the pydantic model so the documented file can never drift from the schema.
    """
    import json

    out: list[str] = [
        "# prodai.yaml: configuration of prodai (https://github.com/prodai/prodai).",
        "# Every key is optional; the values shown are the defaults. Override any key with an",
        "# environment variable PRODAI_SECTION__KEY (e.g. PRODAI_SERVING__PORT=9000).",
        "",
    ]

    def scalar(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (list, dict)):
            return json.dumps(value)
        return str(value)

    def emit(model: type[BaseModel], instance: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for name, field in model.model_fields.items():
            value = getattr(instance, name)
            doc = field.description or ""
            if isinstance(value, BaseModel):
                if indent == 0:
                    out.append("")
                out.append(f"{pad}# {doc}" if doc else f"{pad}#")
                out.append(f"{pad}{name}:")
                emit(type(value), value, indent + 1)
            else:
                dumped = value.model_dump() if isinstance(value, BaseModel) else value
                if isinstance(dumped, dict):
                    dumped = {k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in dumped.items()}
                if isinstance(dumped, list):
                    dumped = [v.model_dump() if isinstance(v, BaseModel) else v for v in dumped]
                line = f"{pad}{name}: {scalar(dumped)}"
                out.append(f"{line}  # {doc}" if doc else line)

    emit(ProdaiConfig, ProdaiConfig(), 0)
    return "\n".join(out).rstrip() + "\n"
