"""The schema of prodai.yaml: one pydantic section per component, and :class:`Settings` around it.

Every key, its default and its description live here; ``prodai init`` renders the documented file from
this model (:mod:`prodai_cli.config.render`), so the two cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CONFIG_FILENAME = "prodai.yaml"
STATE_DIRNAME = ".prodai"
# A rollout's progress, in the state directory (prodai rollout writes it; prodai check reads it).
ROLLOUT_STATE_FILENAME = "rollout.json"
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
Scope = Literal["predict", "admin", "jobs"]


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
    artifact_root: str | None = Field(None, description="Where a local store keeps artifacts. Empty: .prodai/artifacts")
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
    max_batch_tokens: int | None = Field(
        None,
        ge=64,
        description="Padded-token budget of one forward pass. Empty: the runtime's default for the device "
        "(4096 on CPU, 32768 on GPU)",
    )
    max_batch_size: int = Field(64, ge=1, description="Most requests gathered into one forward pass")
    max_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="Extra time to wait for a batch to fill; 0 takes what is queued"
    )
    max_queue: int = Field(1024, ge=1, description="Queued texts before requests get 503 with Retry-After")
    trace: bool = Field(
        True,
        description="Run a torch model as a checked TorchScript trace (made at the first start, kept in "
        ".prodai/traces): each forward pass releases Python's GIL, so requests are parsed while it runs",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Per-request inference timeout (504 past it)")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Request bodies larger than this get 413")
    max_text_chars: int = Field(10_000, ge=1, description="Longer texts get 422")
    max_batch_items: int = Field(64, ge=1, description="Most texts in one /predict/batch request")
    grace_period_s: float = Field(10.0, ge=0, description="On SIGTERM, time in-flight requests get to finish")
    drain_delay_s: float = Field(
        2.0,
        ge=0,
        le=300,
        description="On SIGTERM, seconds /health/ready answers 503 while requests are still served, so load "
        "balancers stop routing here before the socket closes (Ctrl-C skips it)",
    )
    log_bodies: bool = Field(False, description="Log request bodies (off: bodies may hold personal data)")
    max_json_depth: int = Field(32, ge=2, le=1000, description="Most nested arrays/objects in a body (422 past it)")
    max_json_number_digits: int = Field(
        100, ge=1, le=4300, description="Most digits in a JSON integer of a body (422 past it)"
    )
    max_header_bytes: int = Field(
        32_768, ge=1024, le=1_048_576, description="Request line and headers of one request; more gets 431"
    )
    max_headers: int = Field(100, ge=8, le=10_000, description="Header fields in one request; more gets 431")
    request_read_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="A request's head and body must arrive within this many seconds of its first byte (or of "
        "the connection opening); slower ones get 408 and are closed",
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, le=600, description="Idle kept-alive connections close after this")
    max_connections: int = Field(
        1000, ge=1, description="Open connections; a new one beyond this gets 503 with Retry-After and is closed"
    )
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="TCP port of the Open Inference Protocol v2 gRPC service, on serving.host (needs the grpc "
        "extra). Empty: no gRPC",
    )
    grpc_max_message_bytes: int = Field(
        1_048_576,
        ge=1024,
        le=268_435_456,
        description="Largest gRPC request message; larger ones get RESOURCE_EXHAUSTED before they are read",
    )

    @model_validator(mode="after")
    def _batch_request_fits_queue(self) -> ServingConfig:
        # A /predict/batch request larger than the whole queue could never be admitted.
        if self.max_batch_items > self.max_queue:
            raise ValueError(f"max_batch_items ({self.max_batch_items}) cannot exceed max_queue ({self.max_queue})")
        if self.grpc_port is not None and self.grpc_port == self.port:
            raise ValueError(f"grpc_port ({self.grpc_port}) must differ from port")
        return self


# A/B: variant names end up in metric labels and headers; aliases follow MLflow's alias syntax.
AB_VARIANT_NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
AB_ALIAS_PATTERN = r"[A-Za-z_][A-Za-z0-9_\-]*"
# `3` and `v3` both name version 3 wherever a version or an alias is accepted; an alias may not look like one.
AB_VERSION_PATTERN = r"[vV]?([0-9]+)"
# Weights typed as 0.333 x 3 are meant to sum to 1; the router normalises by the real total.
AB_WEIGHT_TOLERANCE = 1e-3


def version_or_alias(value: Any) -> int | str:
    """``3``, ``"3"`` and ``"v3"`` all mean version 3; anything else must look like an MLflow alias.

    Raises:
        ValueError: Neither (pydantic names the key and line).

    """
    if isinstance(value, bool):
        raise ValueError("must be a version number or an alias, not a boolean")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("version numbers start at 1")
        return value
    if isinstance(value, str):
        text = value.strip()
        version = re.fullmatch(AB_VERSION_PATTERN, text)
        if version:
            if int(version.group(1)) < 1:
                raise ValueError("version numbers start at 1")
            return int(version.group(1))
        if re.fullmatch(AB_ALIAS_PATTERN, text):
            return text
    raise ValueError(f"must be a version number (3, v3) or an alias (production), got {value!r}")


class ABVariantConfig(Section):
    """One arm of an A/B split: a version of ``ab.model`` and its share of traffic."""

    version: int | str = Field(
        description="Registry version number (ab-set writes the number, so a server needs no registry to read it) "
        "or an alias, resolved when the server loads"
    )
    weight: float = Field(ge=0, le=1, description="Share of traffic, 0..1; all weights sum to 1")
    alias: str | None = Field(
        None,
        pattern=rf"^{AB_ALIAS_PATTERN}$",
        description="The alias ab-set resolved to `version`; when the alias moves, ab-show, check and ship flag "
        "the variant as stale (it keeps serving `version` until ab-set runs again)",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_or_alias(cls, value: Any) -> int | str:
        return version_or_alias(value)


class BreakerConfig(Section):
    """Per-version circuit breaker."""

    consecutive_failures: int = Field(5, ge=1, description="Open after this many failures in a row")
    failure_rate: float = Field(0.5, gt=0, le=1, description="...or when this share of the window failed")
    window: int = Field(20, ge=1, description="Requests the failure rate is measured over")
    min_calls: int = Field(10, ge=1, description="Calls in the window before the failure rate can open it")
    reset_timeout_s: float = Field(10.0, gt=0, description="Seconds open before a half-open probe")

    @model_validator(mode="after")
    def _min_calls_fit_window(self) -> BreakerConfig:
        if self.min_calls > self.window:
            raise ValueError(f"min_calls ({self.min_calls}) cannot exceed window ({self.window})")
        return self


class CascadeConfig(Section):
    """Cost routing: requests routed to the small variant escalate to the large one when it is unsure."""

    enabled: bool = Field(False, description="Turn the cascade on")
    small: str | None = Field(None, description="Variant name of the cheap model (route traffic to it by weight)")
    large: str | None = Field(None, description="Variant name of the model to escalate to (its weight may be 0)")
    threshold: float = Field(0.8, ge=0, le=1, description="Escalate when the small model's confidence is below")


class ShadowConfig(Section):
    """Shadow traffic: a sampled copy of live requests runs on another version after the answer is sent.

    Its answers are never returned, never cached and never count against the client's rate limit; they are
    compared with the answer the client got (label agreement, embedding cosine) and exported as
    ``prodai_shadow_*`` metrics. Shadow work is dropped first when the server is busy.
    """

    enabled: bool = Field(False, description="Copy sampled requests to the shadow version (needs ab.enabled)")
    version: int | str | None = Field(
        None, description="Version of ab.model that runs the copies: a number (3, v3) or an alias, as in variants"
    )
    sample: float = Field(0.1, ge=0, le=1, description="Share of answered requests copied, 0..1 (or 10%)")
    max_pending: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Texts the shadow may have in flight; a copy beyond it is dropped and counted, never queued",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_or_alias(cls, value: Any) -> int | str | None:
        return None if value is None else version_or_alias(value)

    @field_validator("sample", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        # `10%` reads as in ab-set; anything else is left to the float check (which names the key).
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                return float(value.strip()[:-1]) / 100
            except ValueError:
                return value
        return value

    @model_validator(mode="after")
    def _needs_a_version(self) -> ShadowConfig:
        if self.enabled and self.version is None:
            raise ValueError("shadow.enabled needs shadow.version (prodai ab-shadow v3 --sample 10%)")
        return self


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
    shadow: ShadowConfig = Field(default_factory=ShadowConfig, description="Optional shadow traffic")

    @field_validator("variants")
    @classmethod
    def _weights_sum_to_one(cls, variants: dict[str, ABVariantConfig]) -> dict[str, ABVariantConfig]:
        for name in variants:
            if not re.fullmatch(AB_VARIANT_NAME_PATTERN, name):
                raise ValueError(f"variant name {name!r} may hold only letters, digits, '_', '.' and '-'")
        if variants:
            total = sum(v.weight for v in variants.values())
            if abs(total - 1.0) > AB_WEIGHT_TOLERANCE:
                raise ValueError(f"weights must sum to 1, got {total:g}")
        return variants

    @model_validator(mode="after")
    def _names_refer_to_variants(self) -> ABConfig:
        if self.enabled and not self.variants:
            raise ValueError("ab.enabled needs at least one variant (prodai ab-set v1=0.8 v2=0.2)")
        if self.enabled and not self.model:
            raise ValueError("ab.enabled needs ab.model, the registered model the variants belong to")
        known = ", ".join(self.variants) or "none"
        if self.fallback is not None and self.fallback not in self.variants:
            raise ValueError(f"fallback {self.fallback!r} is not a variant (variants: {known})")
        if self.cascade.enabled:
            small, large = self.cascade.small, self.cascade.large
            if not small or not large:
                raise ValueError("cascade.enabled needs cascade.small and cascade.large")
            for role, name in (("small", small), ("large", large)):
                if name not in self.variants:
                    raise ValueError(f"cascade.{role} {name!r} is not a variant (variants: {known})")
            if small == large:
                raise ValueError("cascade.small and cascade.large must be different variants")
        if self.shadow.enabled and not self.enabled:
            raise ValueError("shadow.enabled needs ab.enabled: shadow traffic copies requests of the A/B router")
        return self


class CacheConfig(Section):
    """Response cache."""

    enabled: bool = Field(True, description="Answer repeated inputs from the cache")
    backend: Literal["memory", "redis"] = Field("memory", description="memory (per process) or redis (shared)")
    ttl_seconds: int = Field(3600, gt=0, description="How long an entry lives")
    max_entries: int = Field(10_000, ge=1, description="memory backend, and the redis backend's local tier: LRU bound")
    local_ttl_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="redis backend: keep entries Redis confirmed in this process this long, so hot texts skip"
        " the round trip (0: off)",
    )
    max_entry_bytes: int = Field(65_536, ge=1, description="Larger responses are not cached")
    redis_timeout_s: float = Field(
        0.1, gt=0, le=10, description="redis backend: socket timeout; a slower Redis is bypassed, not waited for"
    )
    redis_retry_s: float = Field(
        1.0, ge=0, le=300, description="redis backend: after an error, skip Redis this long, then try it again"
    )


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
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Peers (IPs or CIDRs, e.g. 10.0.0.0/8) whose Forwarded or X-Forwarded-For header names the "
        "client IP. Empty: the TCP peer is the client",
    )
    redis_timeout_s: float = Field(
        0.1, gt=0, le=10, description="redis backend: socket timeout; past it the in-memory limiter decides"
    )
    redis_retry_s: float = Field(
        1.0, ge=0, le=300, description="redis backend: after an error, use the in-memory limiter this long"
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        import ipaddress

        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
        return values


# API key names appear in logs, metrics and `prodai keys` output: keep them plain.
API_KEY_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}"


def _iso_timestamp(value: str | None) -> str | None:
    from datetime import datetime

    if value is not None:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 timestamp (2026-01-31T12:00:00+00:00)") from None
        if parsed.tzinfo is None:
            raise ValueError(f"{value!r} needs a time zone (e.g. +00:00)")
    return value


class ApiKeyRecord(Section):
    """A stored API key: only its hash, never the key."""

    name: str = Field(description="Unique key name")
    hash: str = Field(description="sha256 of the key, hex")
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["predict"]), description="Grants")
    created: str | None = Field(None, description="ISO timestamp")
    expires: str | None = Field(None, description="ISO timestamp; empty never expires")
    revoked: bool = Field(False, description="A revoked key is refused")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.fullmatch(API_KEY_NAME_PATTERN, value):
            raise ValueError("key names are 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("hash")
    @classmethod
    def _sha256_hex(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be the 64 lowercase hex digits of a sha256 digest (never the key itself)")
        return value

    @field_validator("scopes")
    @classmethod
    def _some_scope(cls, value: list[Scope]) -> list[Scope]:
        if not value:
            raise ValueError("a key needs at least one scope (predict, jobs or admin)")
        return list(dict.fromkeys(value))

    @field_validator("created", "expires")
    @classmethod
    def _timestamp(cls, value: str | None) -> str | None:
        return _iso_timestamp(value)


class AuthConfig(Section):
    """API keys."""

    enabled: bool = Field(True, description="Require X-API-Key; off only for local development")
    header: str = Field("X-API-Key", description="Header that carries the key")
    keys_file: str | None = Field(None, description="Keep key hashes in this YAML file instead of here")
    keys: list[ApiKeyRecord] = Field(default_factory=list, description="Key hashes (prodai keys create)")

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~\-]+", value):
            raise ValueError(f"{value!r} is not a valid HTTP header name")
        return value

    @model_validator(mode="after")
    def _one_home_for_keys(self) -> AuthConfig:
        if self.keys_file and self.keys:
            raise ValueError("set auth.keys_file or auth.keys, not both (move the records into the keys file)")
        names = [record.name for record in self.keys]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate key names: {', '.join(duplicates)}")
        return self


BUILTIN_REDACTIONS = ("ssn", "card", "email")


class FiltersConfig(Section):
    """Output redaction and input hygiene."""

    redact: list[Literal["ssn", "card", "email"]] = Field(
        default_factory=lambda: list[Literal["ssn", "card", "email"]](["ssn", "card", "email"]),
        description="Built-in patterns redacted from text in responses: ssn, card (Luhn-checked), email",
    )
    patterns: dict[str, str] = Field(
        default_factory=dict, description="Extra patterns to redact: name -> Python regular expression"
    )
    replacement: str = Field("[REDACTED:{name}]", description="What a match becomes; {name} is the pattern's name")
    normalize_input: bool = Field(
        True, description="Input texts: Unicode NFC; control characters except tab and newline removed"
    )

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
                raise ValueError(f"pattern name {name!r} may hold only letters, digits, '_' and '-'")
            if name in BUILTIN_REDACTIONS:
                raise ValueError(f"pattern name {name!r} is built in; list it under filters.redact instead")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name!r} is not a valid regular expression: {exc}") from None
            if compiled.match(""):
                raise ValueError(f"pattern {name!r} matches the empty string")
        return patterns

    @field_validator("replacement")
    @classmethod
    def _formats(cls, value: str) -> str:
        try:
            value.format(name="x")
        except (KeyError, IndexError, ValueError):
            raise ValueError("may use only the placeholder {name} (write {{ and }} for braces)") from None
        return value


class MonitoringConfig(Section):
    """Metrics and logs."""

    metrics: bool = Field(True, description="Expose Prometheus metrics on /metrics")
    log_format: Literal["json", "text"] = Field("json", description="json for machines, text for people")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    access_log: bool = Field(True, description="One log line per request (id, route, status, duration; no body)")
    otlp_endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        description="OpenTelemetry collector (OTLP over HTTP) the server exports spans to, e.g. "
        "http://otel-collector:4318 (needs the otel extra). Empty: no spans, nothing of OpenTelemetry imported",
    )
    otel_service_name: str = Field(
        "prodai", min_length=1, max_length=128, description="service.name of the exported spans"
    )


class DeployConfig(Section):
    """Container images and where they run."""

    target: Literal["docker", "compose", "k8s"] = Field("docker", description="docker, compose or k8s")
    base_image: str = Field("python:3.11-slim", description="Base of the runtime image")
    tag: str | None = Field(None, description="Image tag. Empty: prodai-<model>:<version>")
    port: int = Field(8080, ge=1, le=65535, description="Host port of the docker target")
    replicas: int = Field(1, ge=1, le=64, description="Server replicas (docker and compose: behind the load balancer)")
    gpu: bool = Field(False, description="Request a GPU and use the CUDA image variant")
    readiness_timeout_s: float = Field(120.0, gt=0, description="How long deploy waits for /health/ready")
    name: str | None = Field(
        None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", description="Deployment/container name. Empty: prodai-<model>"
    )
    host: str = Field("0.0.0.0", description="Host address the docker target publishes its port on")
    restart_policy: Literal["no", "on-failure", "unless-stopped", "always"] = Field(
        "unless-stopped", description="Docker restart policy of the server container"
    )
    balancer_image: str | None = Field(
        None,
        description="Load balancer image (HAProxy). Empty: built here from Debian's haproxy package on base_image",
    )
    grafana: bool = Field(False, description="compose: add Grafana with a provisioned dashboard")
    redis_image: str = Field("redis:7-alpine", description="compose: Redis image")
    prometheus_image: str = Field("prom/prometheus:v2.53.0", description="compose: Prometheus image")
    grafana_image: str = Field("grafana/grafana:11.1.0", description="compose: Grafana image")
    offline: bool = Field(
        False,
        description="compose: build Redis and Prometheus from Debian's packages on base_image, pull nothing "
        "(also done when a pull fails)",
    )
    namespace: str = Field("default", description="k8s: namespace of the manifests")
    max_replicas: int = Field(4, ge=1, description="k8s: most replicas the autoscaler may run")
    cpu: str = Field("1", description="k8s: CPU request and limit of one replica")
    memory: str = Field("2Gi", description="k8s: memory request and limit of one replica")
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Job workers (`prodai worker`) beside the server: compose containers, k8s the fewest worker "
        "pods. 0: the server runs jobs itself (jobs.backend embedded)",
    )
    max_workers: int = Field(8, ge=1, le=1024, description="k8s: most worker pods the autoscaler may run")
    jobs_volume_size: str = Field(
        "10Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$",
        description="k8s: size of the jobs volume (the claim shared with workers, or each pod's own without them)",
    )
    jobs_storage_class: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="k8s: storage class of the jobs volume (ReadWriteMany: NFS, CephFS, EFS...). Empty: the default",
    )


class BatchConfig(Section):
    """prodai batch defaults."""

    batch_size: int | Literal["auto"] = Field("auto", description="auto (calibrated token budget) or texts per batch")
    max_tokens: int | None = Field(None, ge=1, description="Truncate texts to this many tokens. Empty: the model's max")
    device: Device = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    precision: Precision = Field("fp32", description="fp32, bf16 or fp16 (fp16 on GPU only)")
    text_field: str = Field("text", description="JSON field holding the text")
    id_field: str = Field("id", description="JSON field holding the id; the line number when absent")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Fail the job when more lines than this are bad")
    chunk_size: int = Field(
        1024, ge=1, le=1_000_000, description="Input lines per crash-safe commit (output fsynced, manifest updated)"
    )
    sort_chunks: int = Field(
        4,
        ge=1,
        le=64,
        description="Consecutive chunks sorted by length together before their forward passes (less padding: "
        "3-5% faster at 4 x 1,024 lines than at 1 on a CPU); each is still committed on its own",
    )
    engine: Literal["local", "ray"] = Field("local", description="local (this process) or ray (Ray Data actors)")
    ray_actors: int = Field(1, ge=1, description="Model replicas (Ray actors) with --engine ray")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads per model. Empty: one per core (fewer can win on a busy machine)"
    )
    max_line_bytes: int = Field(
        1_048_576, ge=1024, description="Input lines longer than this go to the errors file (never held in memory)"
    )
    max_json_depth: int = Field(32, ge=2, le=1000, description="Most nested arrays/objects in an input line")
    max_json_number_digits: int = Field(100, ge=1, le=4300, description="Most digits in an integer of an input line")
    trace: bool = Field(
        True,
        description="Keep a checked TorchScript trace of a torch model in .prodai/traces: later jobs load it "
        "in ~0.1 s instead of building the model class (~2 s)",
    )

    @field_validator("batch_size")
    @classmethod
    def _positive_batch_size(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be auto or a positive number of texts")
        return value


class JobsConfig(Section):
    """Batch jobs over HTTP (POST /v1/jobs, /batch_predict) and the workers that run them."""

    backend: Literal["embedded", "celery"] = Field(
        "embedded",
        description="embedded: the server runs jobs itself in a low-priority child process; celery: "
        "`prodai worker` processes take them from Redis",
    )
    redis_url: str | None = Field(
        None, description="Celery broker and result backend (redis://host:6379/1). Empty: the top-level redis_url"
    )
    dir: str | None = Field(
        None,
        description="Where job inputs, results and records live (shared by server and workers). Empty: .prodai/jobs",
    )
    input_dirs: list[str] = Field(
        default_factory=list,
        description="Directories a POST /v1/jobs may name an input path in. Empty: only uploaded inputs",
    )
    max_queued_per_key: int = Field(10, ge=1, description="Queued or running jobs one API key may have at once")
    max_upload_bytes: int = Field(
        104_857_600, ge=1024, description="Largest JSONL body POST /v1/jobs accepts (413 above)"
    )
    max_texts: int = Field(10_000, ge=1, description="Most texts in one POST /batch_predict")
    max_body_bytes: int = Field(
        10_485_760, ge=1024, description="Largest JSON body POST /batch_predict and POST /v1/jobs accept"
    )
    chunk_size: int = Field(
        256, ge=1, le=1_000_000, description="Input lines per commit; a cancel takes effect at the next one"
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads of a job. Empty: half the cores beside a server, all in a worker"
    )
    nice: int = Field(10, ge=0, le=19, description="CPU niceness of embedded job processes (0-19): /predict first")
    visibility_timeout_s: int = Field(
        3600, ge=1, description="Redis redelivers a job whose worker died after this long (Celery visibility timeout)"
    )
    keep_days: float = Field(7.0, gt=0, description="Finished jobs older than this are removed")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        from prodai_cli.redis_url import RedisAddress

        RedisAddress.parse(value)
        return value


class LoadtestConfig(Section):
    """prodai loadtest defaults."""

    users: int = Field(10, ge=1, description="Concurrent simulated users")
    spawn_rate: float = Field(10.0, gt=0, description="Users started per second")
    duration: str = Field("30s", description="Run time, e.g. 30s, 2m")
    warmup: str = Field("0s", description="Leading time excluded from the SLOs")
    slo: list[str] = Field(
        default_factory=lambda: ["p95 < 500ms", "error_rate < 1%"],
        description="Gates the run must pass: pNN|avg|max < 200ms, error_rate < 1%, rps > 50",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="A request slower than this counts as failed")
    preflight: bool = Field(
        True, description="Send one request before any load; stop (exit 2) when it is refused (401, 403, 429)"
    )
    scale_latency: bool = Field(
        False, description="Scale latency SLOs by the machine's measured CPU contention (a busy machine)"
    )
    max_latency_scale: float = Field(
        10.0, ge=1, le=100, description="Most a latency SLO is scaled by; a busier machine fails scaled SLOs"
    )

    @field_validator("duration", "warmup")
    @classmethod
    def _is_duration(cls, value: str, info: Any) -> str:
        from prodai_cli.errors import UsageError
        from prodai_cli.slo import parse_duration

        try:
            parse_duration(value, what=info.field_name, allow_zero=info.field_name == "warmup")
        except UsageError as exc:
            raise ValueError(f"{exc.message}; write durations like 30s, 2m or 1m30s") from None
        return value

    @field_validator("slo")
    @classmethod
    def _are_slos(cls, value: list[str]) -> list[str]:
        from prodai_cli.errors import UsageError
        from prodai_cli.slo import parse_slo

        for text in value:
            try:
                parse_slo(text)
            except UsageError as exc:
                raise ValueError(f"{exc.message}; {exc.hint or ''}".rstrip("; ")) from None
        return value


# The production checklist, in the order `prodai check` runs it (the burst of rate_limit comes last among the
# live items: it uses up this client's per-IP quota for a moment).
CheckItem = Literal[
    "health",
    "registry",
    "docs",
    "metrics",
    "logging",
    "errors",
    "cache",
    "security",
    "rate_limit",
    "loadtest",
]
CHECK_ITEMS: tuple[str, ...] = CheckItem.__args__  # type: ignore[attr-defined]


class CheckConfig(Section):
    """prodai check (the production checklist) and prodai ship (the gated promotion)."""

    required: list[CheckItem] = Field(
        default_factory=lambda: list[CheckItem](
            ["health", "registry", "metrics", "logging", "errors", "cache", "security", "rate_limit", "loadtest"]
        ),
        description="Items that must pass (a warn passes; fail or skip fails). Others are reported only",
    )
    loadtest_max_age_days: float = Field(
        7.0, gt=0, description="loadtest: the last passing load test of a served version must be this recent"
    )
    probe_key_name: str = Field(
        "prodai-check",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,40}$",
        description="Name prefix of the temporary API key check and ship create (revoked and removed after)",
    )
    burst_max_requests: int = Field(
        500, ge=10, le=100_000, description="rate_limit: most requests the burst sends while waiting for a 429"
    )
    request_timeout_s: float = Field(10.0, gt=0, description="Timeout of each request a check sends")
    ship_slo: list[str] = Field(
        default_factory=list, description="SLOs ship load-tests a candidate against. Empty: loadtest.slo"
    )
    ship_duration: str = Field("20s", description="Length of ship's load test, e.g. 20s, 1m")
    ship_warmup: str = Field("3s", description="Leading part of ship's load test left out of the SLOs")
    ship_users: int | None = Field(None, ge=1, description="Users of ship's load test. Empty: loadtest.users")
    ship_scale_latency: bool = Field(
        True, description="Scale ship's latency SLOs by this machine's measured CPU contention"
    )

    @field_validator("required")
    @classmethod
    def _unique_items(cls, value: list[CheckItem]) -> list[CheckItem]:
        return list(dict.fromkeys(value))

    @field_validator("ship_duration", "ship_warmup")
    @classmethod
    def _ship_duration(cls, value: str, info: Any) -> str:
        return LoadtestConfig._is_duration(value, info)

    @field_validator("ship_slo")
    @classmethod
    def _ship_slos(cls, value: list[str]) -> list[str]:
        return LoadtestConfig._are_slos(value)


class ProdaiConfig(Section):
    """The whole prodai.yaml."""

    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="Model registry (MLflow)")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="Model server")
    ab: ABConfig = Field(default_factory=ABConfig, description="A/B routing between model versions")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="Response cache")
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig, description="Rate limits")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys")
    filters: FiltersConfig = Field(default_factory=FiltersConfig, description="Output redaction and input hygiene")
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig, description="Metrics and logs")
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="Images and deployments")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Batch inference")
    jobs: JobsConfig = Field(default_factory=JobsConfig, description="Batch jobs over HTTP and their workers")
    loadtest: LoadtestConfig = Field(default_factory=LoadtestConfig, description="Load tests")
    check: CheckConfig = Field(default_factory=CheckConfig, description="Production checklist and gated promotion")
    redis_url: str | None = Field(
        None,
        description="Redis shared by cache and rate limits: redis://[:password@]host:6379/0, rediss:// (TLS) or "
        "unix:///path.sock?db=0. Empty: in-memory",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        from prodai_cli.redis_url import RedisAddress

        RedisAddress.parse(value)  # ValueError says what is wrong; the loader adds the key and line
        return value


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
        return resolve_under(self.root, value)


def resolve_under(root: Path, value: str) -> Path:
    """A path from the config (``~`` expanded) taken relative to ``root``, the config's directory."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path
