"""The core of ``prodai ab-set`` and ``prodai ab-show``: parse weights, resolve versions, edit prodai.yaml.

``ab-set v1=0.8 v2=0.2`` turns its arguments into :class:`VariantRequest` s (:func:`parse_variant_args`),
resolves each against the registry to a version number (:func:`resolve_variants`; the number is what gets
stored, so a server without registry access can serve it), and writes the ``ab:`` section through
:func:`prodai_cli.config.edit_config` (comments and layout kept, validated first, atomic, locked).

``ab-show`` reads the configured weights and, given a running server, the live share of traffic per
variant from its Prometheus ``/metrics`` (:func:`variant_request_counts`).
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.config import (
    AB_ALIAS_PATTERN,
    AB_VARIANT_NAME_PATTERN,
    AB_VERSION_PATTERN,
    AB_WEIGHT_TOLERANCE,
    CONFIG_FILENAME,
)
from prodai_cli.errors import ModelNotFoundError, ProdaiError, UsageError
from prodai_cli.refs import parse_model_ref
from prodai_cli.serving.ab.router import REQUESTS_METRIC

if TYPE_CHECKING:
    from prodai_cli.config import ProdaiConfig, Settings

_USAGE_HINT = "Write NAME=WEIGHT per variant, e.g. `prodai ab-set v1=0.8 v2=0.2` or `production=80% staging=20%`"
_VERSION_NAME = re.compile(AB_VERSION_PATTERN)


@dataclass(frozen=True)
class VariantRequest:
    """One ``NAME=WEIGHT`` argument, parsed.

    Attributes:
        name: The variant name stored in prodai.yaml: as typed (``v1``, ``production``), except that a bare
            number ``3`` is named ``v3``.
        ref: The version number, or the alias to resolve.
        weight: The weight as a fraction (``80%`` becomes ``0.8``), exact.

    """

    name: str
    ref: int | str
    weight: Decimal


@dataclass(frozen=True)
class ResolvedVariant:
    """A requested variant with its alias (if any) resolved to a version number."""

    name: str
    version: int
    weight: float
    ref: int | str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{version, weight}`` (plus the alias it came from, if any)."""
        data: dict[str, Any] = {"version": self.version, "weight": self.weight}
        if isinstance(self.ref, str):
            data["alias"] = self.ref
        return data


def parse_weight(text: str) -> Decimal:
    """A weight as an exact fraction: ``0.8``, ``.8``, ``80%``, ``12.5%``.

    Raises:
        UsageError: Not a finite number, negative, or above 1 (100%).

    """
    raw = text.strip()
    percent = raw.endswith("%")
    number = raw[:-1].strip() if percent else raw
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise UsageError(f"Weight {text!r} is not a number", hint=_USAGE_HINT) from None
    if not value.is_finite():
        raise UsageError(f"Weight {text!r} is not a finite number", hint=_USAGE_HINT)
    if percent:
        value = value / 100
    if value < 0:
        raise UsageError(f"Weight {text!r} is negative", hint=_USAGE_HINT)
    if value > 1:
        hint = f"Write {text}% for a percentage" if not percent else _USAGE_HINT
        raise UsageError(f"Weight {text!r} is above {'100%' if percent else '1'}", hint=hint)
    return value


def parse_variant_target(token: str) -> tuple[str, int | str]:
    """The stored name and the version-or-alias of a variant written ``v3``, ``3`` or an alias.

    Raises:
        UsageError: The token is neither a version nor an alias.

    """
    match = _VERSION_NAME.fullmatch(token)
    if match:
        version = int(match.group(1))
        if version < 1:
            raise UsageError(f"Version {token!r} does not exist: versions start at 1")
        return (token if token[0] in "vV" else f"v{version}"), version
    if re.fullmatch(AB_ALIAS_PATTERN, token) and re.fullmatch(AB_VARIANT_NAME_PATTERN, token):
        return token, token
    raise UsageError(
        f"Variant {token!r} is neither a version (v3, 3) nor an alias (letters, digits, '_' and '-')",
        hint=_USAGE_HINT,
    )


def parse_variant_args(args: Sequence[str]) -> list[VariantRequest]:
    """Parse ``NAME=WEIGHT`` arguments and check the weights sum to 1 (100%).

    Raises:
        UsageError: A malformed argument, a duplicate variant, or weights that do not sum to 1.

    """
    if not args:
        raise UsageError("No variants given", hint=_USAGE_HINT)
    requests: list[VariantRequest] = []
    seen: dict[str, str] = {}
    for arg in args:
        name_part, sep, weight_part = arg.partition("=")
        name_part, weight_part = name_part.strip(), weight_part.strip()
        if not sep:
            raise UsageError(f"Expected NAME=WEIGHT, got {arg!r}", hint=_USAGE_HINT)
        if not name_part:
            raise UsageError(f"{arg!r} names no variant before '='", hint=_USAGE_HINT)
        if not weight_part:
            raise UsageError(f"{arg!r} gives no weight after '='", hint=_USAGE_HINT)
        name, ref = parse_variant_target(name_part)
        if name in seen:
            raise UsageError(f"Variant {name!r} is given twice ({seen[name]!r} and {arg!r})")
        seen[name] = arg
        requests.append(VariantRequest(name=name, ref=ref, weight=parse_weight(weight_part)))
    total = sum((r.weight for r in requests), Decimal(0))
    if abs(total - 1) > Decimal(str(AB_WEIGHT_TOLERANCE)):
        raise UsageError(
            f"Weights sum to {_fmt_decimal(total)} ({_fmt_decimal(total * 100)}%), not 1 (100%)", hint=_USAGE_HINT
        )
    return requests


def _fmt_decimal(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def ab_model_name(config: ProdaiConfig, explicit: str | None = None) -> str:
    """The registered model the variants belong to.

    ``--model``, else ``ab.model``, else the name part of ``registry.default_model``.

    Raises:
        UsageError: None of them is set, or ``--model`` is a reference with a version or alias.

    """
    if explicit:
        ref = parse_model_ref(explicit)
        if ref.alias or ref.version is not None:
            raise UsageError(
                f"--model takes a model name, got {explicit!r}",
                hint=f"Use --model {ref.name} and name versions or aliases as variants",
            )
        return ref.name
    if config.ab.model:
        return config.ab.model
    if config.registry.default_model:
        return parse_model_ref(config.registry.default_model).name
    raise UsageError(
        "No model to split traffic for", hint="Pass --model NAME, or set ab.model or registry.default_model"
    )


def resolve_variants(
    requests: Sequence[VariantRequest], model: str, lookup: Callable[[str], int]
) -> list[ResolvedVariant]:
    """Resolve every requested variant to a version number that exists in the registry.

    Args:
        requests: Parsed arguments.
        model: Registered model name.
        lookup: Takes ``NAME/VERSION`` or ``NAME@ALIAS`` and returns the version number, raising
            ModelNotFoundError when it does not exist (``Registry.get_version(...).version``).

    Raises:
        ModelNotFoundError: One or more versions or aliases do not exist; the message names each one.

    """
    resolved: list[ResolvedVariant] = []
    missing: list[str] = []
    hints: list[str] = []
    for request in requests:
        ref = f"{model}/{request.ref}" if isinstance(request.ref, int) else f"{model}@{request.ref}"
        try:
            version = lookup(ref)
        except ModelNotFoundError as exc:
            if exc.message not in missing:
                missing.append(exc.message)
            if exc.hint and exc.hint not in hints:
                hints.append(exc.hint)
            continue
        resolved.append(ResolvedVariant(request.name, version, float(request.weight), request.ref))
    if missing:
        if not any(message.startswith("Unknown model") for message in missing):
            hints.append(f"See the versions and aliases of {model} with: prodai models show {model}")
        raise ModelNotFoundError("; ".join(missing) + ". Nothing was written", hint="; ".join(hints) or None)
    return resolved


@dataclass(frozen=True)
class ABSetResult:
    """What ``ab-set`` did (or, with ``--dry-run``, would do)."""

    path: Path
    model: str
    variants: list[ResolvedVariant]
    written: bool
    diff: str

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "path": str(self.path),
            "model": self.model,
            "variants": {v.name: v.to_dict() for v in self.variants},
            "written": self.written,
            "diff": self.diff,
        }


def _ab_mutation(model: str, variants: Sequence[ResolvedVariant]) -> Callable[[Any], None]:
    """The edit of the round-trip document: ab.enabled, ab.model and ab.variants, nothing else."""

    def mutate(doc: Any) -> None:
        from ruamel.yaml.comments import CommentedMap

        section = doc.get("ab")
        if not isinstance(section, dict):
            section = CommentedMap()
            doc["ab"] = section
        section["enabled"] = True
        section["model"] = model
        current = section.get("variants")
        # An empty or flow-style mapping (`variants: {}` in the generated file) becomes a block mapping.
        if not isinstance(current, CommentedMap) or not current or current.fa.flow_style():
            current = CommentedMap()
            section["variants"] = current
        wanted = {v.name: v for v in variants}
        for name in [n for n in current if n not in wanted]:
            del current[name]
        for variant in variants:
            entry = current.get(variant.name)
            alias = variant.ref if isinstance(variant.ref, str) else None
            if isinstance(entry, CommentedMap) and not entry.fa.flow_style():
                # Edit in place so comments on the variant's lines survive.
                entry["version"] = variant.version
                entry["weight"] = variant.weight
                if alias is not None:
                    entry["alias"] = alias
                elif "alias" in entry:
                    del entry["alias"]
            else:
                fields = [("version", variant.version), ("weight", variant.weight)]
                # The alias it came from: ab-show, check and ship compare it with where the alias points now.
                current[variant.name] = CommentedMap(fields + ([("alias", alias)] if alias is not None else []))

    return mutate


def unified_diff(before: str, after: str, name: str) -> str:
    """A ``git diff`` style unified diff of two versions of a file ('' when equal)."""
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{name}", f"b/{name}"
        )
    )


def write_ab_variants(
    path: Path, model: str, variants: Sequence[ResolvedVariant], *, dry_run: bool = False
) -> ABSetResult:
    """Enable A/B on ``model`` with ``variants`` in the config at ``path`` (see :func:`prodai_cli.config.edit_config`).

    Raises:
        ConfigError: The edited file would not validate (nothing is written).

    """
    from prodai_cli.config import edit_config

    edit = edit_config(path, _ab_mutation(model, variants), dry_run=dry_run)
    return ABSetResult(
        path=path,
        model=model,
        variants=list(variants),
        written=edit.written,
        diff=unified_diff(edit.before, edit.after, path.name),
    )


def ab_set(settings: Settings, args: Sequence[str], *, model: str | None = None, dry_run: bool = False) -> ABSetResult:
    """The whole of ``prodai ab-set``: parse, resolve against the registry, edit prodai.yaml.

    The file edited is the one the settings were loaded from, or ``prodai.yaml`` in the project root.

    Raises:
        UsageError: Malformed arguments or weights (exit 2).
        ModelNotFoundError: An unknown model, version or alias (exit 1).
        ConfigError: The result would not be a valid config (exit 2).

    """
    requests = parse_variant_args(args)  # before touching the registry: bad input fails fast
    name = ab_model_name(settings.config, model)
    from prodai_cli.registry import Registry

    registry = Registry(settings)
    resolved = resolve_variants(requests, name, lambda ref: registry.get_version(ref).version)
    path = settings.path or settings.root / CONFIG_FILENAME
    return write_ab_variants(path, name, resolved, dry_run=dry_run)


# --------------------------------------------------------------------------------------------- stale variants


@dataclass(frozen=True)
class StaleVariant:
    """An A/B variant set by alias whose alias has since moved to another version.

    The server keeps serving ``version`` (what ab-set stored): a variant follows its alias only when ab-set
    runs again. This is the documented behaviour (docs/ab.md); ab-show, check and ship say so.
    """

    name: str
    version: int
    alias: str
    now: int | None

    def describe(self, model: str) -> str:
        """``variant production serves clf/1, but alias production now points at v2``."""
        where = f"now points at v{self.now}" if self.now is not None else "no longer exists"
        return f"A/B variant {self.name} serves {model}/{self.version}, but alias {self.alias} {where}"


def stale_variants(config: ProdaiConfig, alias_version: Callable[[str, str], int | None]) -> list[StaleVariant]:
    """The configured variants whose recorded alias now points elsewhere (empty when A/B is off).

    Args:
        config: The config whose ``ab`` section is read.
        alias_version: ``(model, alias) -> version`` (None when the alias is gone).

    """
    ab = config.ab
    if not ab.enabled or not ab.model:
        return []
    stale = []
    for name, spec in ab.variants.items():
        if spec.alias is None or not isinstance(spec.version, int):
            continue
        now = alias_version(ab.model, spec.alias)
        if now != spec.version:
            stale.append(StaleVariant(name=name, version=spec.version, alias=spec.alias, now=now))
    return stale


def registry_alias_version(settings: Settings) -> Callable[[str, str], int | None]:
    """An ``alias_version`` for :func:`stale_variants` that asks the settings' registry."""
    from prodai_cli.refs import ModelRef
    from prodai_cli.registry import Registry

    registry = Registry(settings)

    def lookup(model: str, alias: str) -> int | None:
        try:
            return registry.get_version(ModelRef(name=model, alias=alias)).version
        except ModelNotFoundError:
            return None

    return lookup


def resplit_command(config: ProdaiConfig) -> str:
    """``prodai ab-set production=90% v2=10% --model clf``: today's split, written so ab-set re-resolves it.

    A variant set by alias is named after it, so the same command resolves each alias again.
    """
    ab = config.ab
    parts = []
    for name, spec in ab.variants.items():
        weight = f"{Decimal(str(spec.weight)) * 100:f}"
        if "." in weight:
            weight = weight.rstrip("0").rstrip(".")
        parts.append(f"{name}={weight}%")
    return f"prodai ab-set {' '.join(parts)} --model {ab.model}"


# --------------------------------------------------------------------------------------------- ab-show


def variant_request_counts(metrics_text: str, metric: str = REQUESTS_METRIC) -> dict[str, float]:
    """Requests per variant in Prometheus text: ``metric`` samples summed over every other label.

    Samples without a ``variant`` label (or with an empty one) are left out.

    Raises:
        ProdaiError: The text is not in the Prometheus exposition format.

    """
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                if sample.name != metric:
                    continue
                variant = sample.labels.get("variant", "")
                if variant:
                    counts[variant] = counts.get(variant, 0.0) + float(sample.value)
    except ValueError as exc:
        raise ProdaiError(f"The server's /metrics is not Prometheus text: {exc}") from None
    return counts


def metrics_url(url: str) -> str:
    """``URL/metrics`` for a server base URL (a URL already ending in /metrics is kept)."""
    base = url.rstrip("/")
    return base if base.endswith("/metrics") else f"{base}/metrics"


def fetch_metrics(url: str, *, headers: dict[str, str] | None = None, timeout_s: float = 5.0) -> str:
    """GET a server's /metrics.

    Raises:
        ProdaiError: The server cannot be reached or does not answer 200.

    """
    import httpx

    target = metrics_url(url)
    try:
        response = httpx.get(target, headers=headers or {}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ProdaiError(f"Cannot read {target}: {exc}", hint="Is `prodai serve` running there?") from None
    if response.status_code != 200:
        hint = "Pass an admin key with --api-key" if response.status_code in (401, 403) else None
        raise ProdaiError(f"{target} answered HTTP {response.status_code}", hint=hint)
    return response.text


def live_variant_counts(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    interval_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, float]:
    """Requests per variant served so far, or during the next ``interval_s`` seconds when it is positive.

    With an interval the counters are read twice and subtracted (a counter that went down means the server
    restarted; its new value is taken as the interval's count).
    """
    first = variant_request_counts(fetch_metrics(url, headers=headers))
    if interval_s <= 0:
        return first
    sleep(interval_s)
    second = variant_request_counts(fetch_metrics(url, headers=headers))
    return {
        name: (value - first.get(name, 0.0) if value >= first.get(name, 0.0) else value)
        for name, value in second.items()
    }


def ab_show(
    config: ProdaiConfig,
    *,
    url: str | None = None,
    api_key: str | None = None,
    interval_s: float = 0.0,
    alias_version: Callable[[str, str], int | None] | None = None,
) -> dict[str, Any]:
    """The configured split and, given a server URL, the live share of its traffic per variant.

    Args:
        config: The config whose ``ab`` section is shown.
        url: A running server to read the live traffic from.
        api_key: Key sent to that server.
        interval_s: Count the traffic of the next seconds (0: since the server started).
        alias_version: ``(model, alias) -> version`` (see :func:`registry_alias_version`): flags variants
            whose alias moved since ab-set (``stale``); None skips that.

    Returns:
        ``{enabled, model, variants: {name: {version, weight, alias, stale, alias_now, requests, share}},
        shadow: {version, sample, live} | None, url, total_requests, other_variants, stale, resplit}`` (``live``:
        the server's shadow figures, see :func:`shadow_figures`); ``other_variants`` holds traffic of variants the
        config does not name (a server not yet reloaded, or A/B off); ``stale`` describes each stale
        variant and ``resplit`` is the ab-set command that makes them follow their aliases again.

    """
    ab = config.ab
    variants: dict[str, dict[str, Any]] = {
        name: {
            "version": spec.version,
            "weight": spec.weight,
            "alias": spec.alias,
            "stale": False,
            "alias_now": None,
            "requests": None,
            "share": None,
        }
        for name, spec in ab.variants.items()
    }
    stale: list[StaleVariant] = []
    stale_error = None
    if alias_version is not None:
        try:
            stale = stale_variants(config, alias_version)
        except ProdaiError as exc:
            # The split is still worth showing when the registry cannot be asked.
            stale_error = f"aliases not checked: {exc.message}"
    for variant in stale:
        variants[variant.name].update(stale=True, alias_now=variant.now)
    copies = ab.shadow
    result: dict[str, Any] = {
        "enabled": ab.enabled,
        "model": ab.model,
        "variants": variants,
        "shadow": {"version": copies.version, "sample": copies.sample, "live": None} if copies.enabled else None,
        "url": url,
        "interval_s": interval_s if url else None,
        "total_requests": None,
        "other_variants": {},
        "stale": [variant.describe(ab.model or "") for variant in stale],
        "resplit": resplit_command(config) if stale else None,
        "stale_error": stale_error,
    }
    if not url:
        return result
    headers = {config.auth.header: api_key} if api_key else {}
    counts = live_variant_counts(url, headers=headers, interval_s=interval_s)
    if result["shadow"] is not None:
        # Since the server started: the comparison is a running tally, not a window.
        live = shadow_figures(fetch_metrics(url, headers=headers))
        named = live.get(f"v{copies.version}") if isinstance(copies.version, int) else None
        # An alias: the one shadow the server ran, if only one.
        result["shadow"]["live"] = named if named is not None or len(live) != 1 else next(iter(live.values()))
    total = sum(counts.values())
    result["total_requests"] = total
    for name, entry in variants.items():
        entry["requests"] = counts.get(name, 0.0)
        entry["share"] = counts.get(name, 0.0) / total if total else None
    result["other_variants"] = {
        name: {"requests": value, "share": value / total if total else None}
        for name, value in counts.items()
        if name not in variants
    }
    return result


# --------------------------------------------------------------------------------------------- ab-shadow


@dataclass(frozen=True)
class ABShadowResult:
    """What ``ab-shadow`` did (or, with ``--dry-run``, would do)."""

    path: Path
    model: str
    enabled: bool
    version: int | None
    sample: float | None
    written: bool
    diff: str
    # The comparison that ended, recorded as an MLflow run on the shadow version (given a server URL).
    recorded: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "path": str(self.path),
            "model": self.model,
            "enabled": self.enabled,
            "version": self.version,
            "sample": self.sample,
            "written": self.written,
            "diff": self.diff,
            "recorded": self.recorded,
        }


def shadow_mutation(version: int | None, sample: float | None) -> Callable[[Any], None]:
    """The edit of ``ab.shadow``: on (version, sample) or off (``version`` None keeps the other keys)."""

    def mutate(doc: Any) -> None:
        from ruamel.yaml.comments import CommentedMap

        section = doc.get("ab")
        if not isinstance(section, dict):
            section = CommentedMap()
            doc["ab"] = section
        shadow = section.get("shadow")
        if not isinstance(shadow, CommentedMap) or shadow.fa.flow_style():
            shadow = CommentedMap(shadow or {})
            section["shadow"] = shadow
        shadow["enabled"] = version is not None
        if version is not None:
            shadow["version"] = version
            shadow["sample"] = sample

    return mutate


def ab_shadow(
    settings: Settings,
    target: str | None,
    *,
    sample: str = "10%",
    off: bool = False,
    dry_run: bool = False,
    url: str | None = None,
    api_key: str | None = None,
) -> ABShadowResult:
    """The whole of ``prodai ab-shadow``: copy a share of live traffic to a version, or stop copying.

    Args:
        settings: The project (its prodai.yaml is edited).
        target: The shadow version (``v3``, ``3`` or an alias, resolved to its number); None with ``off``.
        sample: Share of answered requests copied (``10%``, ``0.1``).
        off: Stop shadowing.
        dry_run: Print the diff; write nothing.
        url: The server running the shadow now: its comparison so far is recorded as an MLflow run on the
            shadow version before the shadow is turned off or moved (``recorded``).
        api_key: Key sent to that server.

    Raises:
        UsageError: Bad arguments, or A/B is off (the server copies requests of its A/B router).
        ModelNotFoundError: The version or alias does not exist.
        ConfigError: The result would not be a valid config (nothing is written).

    """
    from prodai_cli.config import edit_config

    config = settings.config
    path = settings.path or settings.root / CONFIG_FILENAME
    if off == (target is not None):
        raise UsageError("Name the shadow version (prodai ab-shadow v3 --sample 10%) or pass --off")
    if not config.ab.enabled or not config.ab.model:
        raise UsageError(
            "Shadow traffic copies requests of the A/B router, and A/B is off",
            hint="Route all traffic to the stable version first, e.g. prodai ab-set production=100% --model NAME",
        )
    model = config.ab.model
    version: int | None = None
    share: float | None = None
    if target is not None:
        _, ref = parse_variant_target(target)
        share = float(parse_weight(sample))
        if share <= 0:
            raise UsageError("--sample must be above 0 (use --off to stop shadowing)")
        from prodai_cli.registry import Registry

        registry = Registry(settings)
        version = registry.get_version(f"{model}/{ref}" if isinstance(ref, int) else f"{model}@{ref}").version
    recorded = None
    if url and not dry_run and config.ab.shadow.enabled and config.ab.shadow.version is not None:
        headers = {config.auth.header: api_key} if api_key else {}
        recorded = record_shadow(settings, model, config.ab.shadow.version, url, headers)
    edit = edit_config(path, shadow_mutation(version, share), dry_run=dry_run)
    return ABShadowResult(
        path=path,
        model=model,
        enabled=version is not None,
        version=version,
        sample=share,
        written=edit.written,
        diff=unified_diff(edit.before, edit.after, path.name),
        recorded=recorded,
    )


def record_shadow(
    settings: Settings, model: str, version: int | str, url: str, headers: dict[str, str]
) -> dict[str, Any] | None:
    """Record the server's shadow comparison so far as an MLflow run on the shadow version, and tag it.

    Returns:
        ``{run_id, version, compared, agreement}``, or None when the server has compared nothing yet.

    Raises:
        ProdaiError: The server or the registry cannot be reached.

    """
    from datetime import UTC, datetime

    from prodai_cli.registry import Registry

    registry = Registry(settings)
    number = registry.get_version(f"{model}/{version}" if isinstance(version, int) else f"{model}@{version}").version
    live = shadow_figures(fetch_metrics(url, headers=headers)).get(f"v{number}")
    if not live or not live["compared"]:
        return None
    metrics = {
        "compared": float(live["compared"]),
        "agreement": float(live["agreement"]),
        "errors": float(live["errors"]),
        "dropped": float(sum(live["dropped"].values())),
    }
    for key in ("primary_avg_ms", "shadow_avg_ms"):
        if live[key] is not None:
            metrics[key] = float(live[key])
    run_id = registry.record_run(
        f"shadow-{model}-v{number}",
        tags={"prodai.action": "shadow", "prodai.model": model, "prodai.version": str(number)},
        metrics=metrics,
        params={"url": url, "by_variant": str(live["by_variant"]), "dropped": str(live["dropped"])},
        what="Recording the shadow comparison",
    )
    registry.set_version_tags(
        model,
        number,
        {
            "prodai.shadow.run_id": run_id,
            "prodai.shadow.at": datetime.now(UTC).isoformat(timespec="seconds"),
            "prodai.shadow.agreement": f"{live['agreement']:.4f}",
            "prodai.shadow.compared": f"{live['compared']:.0f}",
        },
    )
    return {"run_id": run_id, "version": number, "compared": live["compared"], "agreement": live["agreement"]}


def shadow_figures(metrics_text: str) -> dict[str, dict[str, Any]]:
    """Live shadow figures per shadow version label (``v3``) from a server's ``/metrics``.

    Returns:
        ``{shadow: {compared, agreement, by_variant: {variant: {compared, agreement}}, errors, dropped:
        {reason: n}, primary_avg_ms, shadow_avg_ms}}``; ``agreement`` is None before anything was compared.

    Raises:
        ProdaiError: The text is not in the Prometheus exposition format.

    """
    from prometheus_client.parser import text_string_to_metric_families

    from prodai_cli.serving.ab import shadow as series

    figures: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return figures.setdefault(
            name,
            {"compared": 0.0, "agreed": 0.0, "by_variant": {}, "errors": 0.0, "dropped": {}, "latency": {}},
        )

    try:
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                labels, value = sample.labels, float(sample.value)
                shadow = labels.get("shadow")
                if not shadow:
                    continue
                if sample.name in (series.COMPARED_METRIC, series.AGREEMENT_METRIC):
                    key = "compared" if sample.name == series.COMPARED_METRIC else "agreed"
                    entry(shadow)[key] += value
                    per = entry(shadow)["by_variant"].setdefault(
                        labels.get("variant", ""), {"compared": 0.0, "agreed": 0.0}
                    )
                    per[key] += value
                elif sample.name == series.ERRORS_METRIC:
                    entry(shadow)["errors"] += value
                elif sample.name == series.DROPPED_METRIC:
                    dropped = entry(shadow)["dropped"]
                    dropped[labels.get("reason", "")] = dropped.get(labels.get("reason", ""), 0.0) + value
                elif sample.name in (f"{series.LATENCY_METRIC}_sum", f"{series.LATENCY_METRIC}_count"):
                    side = entry(shadow)["latency"].setdefault(labels.get("side", ""), {"sum": 0.0, "count": 0.0})
                    side["sum" if sample.name.endswith("_sum") else "count"] += value
    except ValueError as exc:
        raise ProdaiError(f"The server's /metrics is not Prometheus text: {exc}") from None
    result: dict[str, dict[str, Any]] = {}
    for name, raw in figures.items():
        latency = raw["latency"]

        def avg_ms(side: str, latency: dict[str, Any] = latency) -> float | None:
            numbers = latency.get(side)
            return numbers["sum"] / numbers["count"] * 1000.0 if numbers and numbers["count"] else None

        result[name] = {
            "compared": raw["compared"],
            "agreement": raw["agreed"] / raw["compared"] if raw["compared"] else None,
            "by_variant": {
                variant: {
                    "compared": per["compared"],
                    "agreement": per["agreed"] / per["compared"] if per["compared"] else None,
                }
                for variant, per in raw["by_variant"].items()
            },
            "errors": raw["errors"],
            "dropped": raw["dropped"],
            "primary_avg_ms": avg_ms("primary"),
            "shadow_avg_ms": avg_ms("shadow"),
        }
    return result
