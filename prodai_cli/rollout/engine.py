"""The canary rollout: plan, state file, weight changes, per-step judging, promotion and rollback.

A rollout starts from one **stable** version serving all of a model's traffic (``ab`` off and
``serving.model`` naming it, or an A/B split whose only weighted variant it is) and a **candidate**. Each
step writes the split ``stable=1-p, candidate=p`` through the same atomic config edit as ``ab-set`` (the
stable variant is the fallback, so a failing candidate's requests are answered by the stable one), waits
until the server has reloaded it, and then judges the candidate's own traffic of that step, read from the
server's ``/metrics`` (see :mod:`prodai_cli.rollout.window`). The SLOs are judged at every poll once the
step has ``min_requests`` of the candidate's requests: the first breach puts the original config back at
once (all traffic on the stable version) and the rollout ends ``rolled_back``. A step passes when its
interval is over with every SLO holding; a step that never gets enough traffic (three intervals) is a
failure too, since nothing was shown to be safe. After the last step the promotion alias moves to the
candidate and the config is left with one variant, that alias at weight 1.

Every change is written to the state file before and after it is made, so a rollout killed at any point
can be resumed or aborted without guessing what the weights are.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prodai_cli.errors import ProdaiError, UsageError
from prodai_cli.rollout.window import Snapshot, Window, snapshot, window
from prodai_cli.slo import evaluate, parse_slos

if TYPE_CHECKING:
    from prodai_cli.config import Settings

MAX_STEPS = 20
# A step without enough of the candidate's requests waits this many intervals in all before it fails.
STARVED_INTERVALS = 3
RELOAD_TIMEOUT_S = 120.0
RELOAD_METRIC = "prodai_config_reload_timestamp_seconds"
RELOAD_OK_METRIC = "prodai_config_reload_success"
# SLO metrics a histogram and counters can answer (min/max need every sample).
JUDGEABLE = ("error_rate", "rps", "avg_ms", "agreement")
ACTIVE = "running"


def parse_steps(text: str) -> list[float]:
    """``5%,25%,50%,100%`` (or ``0.05,0.25,...``) -> ascending fractions ending at 1.

    Raises:
        UsageError: Not a comma-separated list of increasing shares in (0, 100%] ending at 100%.

    """
    from prodai_cli.abconfig import parse_weight

    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise UsageError("--steps needs at least one share, e.g. --steps 5%,25%,50%,100%")
    if len(parts) > MAX_STEPS:
        raise UsageError(f"--steps takes at most {MAX_STEPS} steps, got {len(parts)}")
    steps = [float(parse_weight(part)) for part in parts]
    for previous, share in zip([0.0, *steps], steps, strict=False):
        if share <= previous:
            raise UsageError(f"--steps must increase and be above 0: {text!r}")
    if abs(steps[-1] - 1.0) > 1e-9:
        raise UsageError(f"--steps must end at 100% (the candidate takes all traffic before promotion): {text!r}")
    steps[-1] = 1.0
    return steps


@dataclass
class Arm:
    """One side of the rollout: the variant name it serves as, its version and the alias it came from."""

    name: str
    version: int
    alias: str | None = None


@dataclass
class RolloutPlan:
    """What a rollout will do (``--dry-run`` prints it)."""

    model: str
    stable: Arm
    candidate: Arm
    promote_alias: str
    steps: list[float]
    interval_s: float
    slos: list[str]
    min_requests: int
    url: str
    # The `ab` section as it was (enabled, model, variants, fallback, shadow): an abort or a breach restores it.
    original_ab: dict[str, Any]
    # With an `agreement` SLO: every step also copies the candidate's requests to the stable version (this
    # share of them) and compares the answers; 0 without one.
    shadow_sample: float = 0.0
    # A docker or compose deployment (its target): every replica is waited for and judged (rollout/replicas.py).
    deployment: str | None = None
    deployment_target: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutPlan:
        """The inverse of :meth:`to_dict`."""
        fields = dict(data)
        fields["stable"] = Arm(**data["stable"])
        fields["candidate"] = Arm(**data["candidate"])
        return cls(**fields)


@dataclass
class RolloutState:
    """The rollout's progress, as kept in ``.prodai/rollout.json``."""

    plan: RolloutPlan
    status: str = ACTIVE  # running | succeeded | rolled_back | aborted
    step: int = 0
    step_started: float | None = None  # unix time the current step's window opened
    baseline: dict[str, Any] | None = None  # the candidate's counters when it opened
    timeline: list[dict[str, Any]] = field(default_factory=list)
    pid: int | None = None
    reason: str | None = None
    weights: dict[str, float] = field(default_factory=dict)  # what the config says now
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data = asdict(self)
        data["plan"] = self.plan.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        """The inverse of :meth:`to_dict`."""
        fields = dict(data)
        fields["plan"] = RolloutPlan.from_dict(data["plan"])
        return cls(**fields)


def state_path(settings: Settings) -> Path:
    """Where the rollout's state lives: ``.prodai/rollout.json`` beside prodai.yaml."""
    from prodai_cli.config import ROLLOUT_STATE_FILENAME, STATE_DIRNAME

    return settings.root / STATE_DIRNAME / ROLLOUT_STATE_FILENAME


def load_state(settings: Settings) -> RolloutState | None:
    """The last rollout's state, or None when there was none.

    Raises:
        ProdaiError: The state file exists but cannot be read.

    """
    path = state_path(settings)
    if not path.exists():
        return None
    try:
        return RolloutState.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProdaiError(
            f"Cannot read the rollout state {path}: {exc}", hint="Remove it if no rollout is under way"
        ) from None


def _save(settings: Settings, state: RolloutState) -> None:
    from prodai_cli.config import write_atomic

    write_atomic(state_path(settings), json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n")


def _alive(pid: int | None) -> bool:
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------- planning


def _stable_arm(settings: Settings, model: str, registry: Any) -> Arm:
    """The one version serving all of ``model``'s traffic now (the rollout's starting point)."""
    from prodai_cli.refs import parse_model_ref
    from prodai_cli.serving.app import served_model_ref

    config = settings.config
    ab = config.ab
    if ab.enabled:
        if ab.model != model:
            raise UsageError(f"The A/B split is on model {ab.model!r}, not {model!r}: a rollout moves one model")
        weighted = [(name, spec) for name, spec in ab.variants.items() if spec.weight > 0]
        if len(weighted) != 1:
            split = ", ".join(f"{name}={spec.weight:g}" for name, spec in ab.variants.items())
            raise UsageError(
                f"A rollout starts from one stable version taking all traffic; the split now is {split}",
                hint="Put the stable version back on all traffic first, e.g. prodai ab-set production=100%",
            )
        name, spec = weighted[0]
        if isinstance(spec.version, int):
            return Arm(name=name, version=spec.version, alias=spec.alias)
        version = registry.get_version(f"{model}@{spec.version}").version
        return Arm(name=name, version=version, alias=spec.version)
    ref = parse_model_ref(served_model_ref(config.serving, config.registry))
    if ref.name != model:
        raise UsageError(f"The server serves {ref} (serving.model), not a version of {model!r}")
    info = registry.get_version(ref)
    return Arm(name=ref.alias or f"v{info.version}", version=info.version, alias=ref.alias)


def plan_rollout(
    settings: Settings,
    candidate_ref: str,
    *,
    steps: list[float],
    interval_s: float,
    slos: list[str],
    min_requests: int,
    url: str,
    promote_alias: str | None = None,
    deployment: tuple[str, str] | None = None,
) -> RolloutPlan:
    """Check everything a rollout needs before it touches anything.

    ``deployment`` is (name, target) of a docker or compose deployment whose replicas are all judged.

    Raises:
        UsageError: Bad arguments, an SLO the live metrics cannot answer, or no single stable version.
        ModelNotFoundError: The candidate does not exist.

    """
    from prodai_cli.refs import parse_model_ref
    from prodai_cli.registry import Registry, validate_alias

    parsed = parse_slos(slos, live=True)
    for slo in parsed:
        if slo.percentile is None and slo.key not in JUDGEABLE:
            raise UsageError(
                f"SLO {slo.text!r} cannot be judged from live metrics",
                hint="Use pNN, avg, error_rate or rps (min and max need every sample)",
            )
    if min_requests < 1:
        raise UsageError("--min-requests must be at least 1")
    ref = parse_model_ref(candidate_ref)
    registry = Registry(settings)
    info = registry.get_version(ref)
    stable = _stable_arm(settings, ref.name, registry)
    if stable.version == info.version:
        raise UsageError(f"{candidate_ref} is version {info.version}, which already serves all traffic")
    candidate_name = ref.alias or f"v{info.version}"
    if candidate_name == stable.name:
        candidate_name = f"v{info.version}"
    alias = promote_alias or stable.alias or "production"
    validate_alias(alias)
    ab = settings.config.ab
    original = {
        "enabled": ab.enabled,
        "model": ab.model,
        "fallback": ab.fallback,
        "variants": {
            name: {k: v for k, v in spec.model_dump().items() if v is not None} for name, spec in ab.variants.items()
        },
        "shadow": {k: v for k, v in ab.shadow.model_dump().items() if v is not None} if ab.shadow.enabled else None,
    }
    return RolloutPlan(
        model=ref.name,
        stable=stable,
        candidate=Arm(name=candidate_name, version=info.version, alias=ref.alias),
        promote_alias=alias,
        steps=steps,
        interval_s=interval_s,
        slos=[slo.text for slo in parsed],
        min_requests=min_requests,
        url=url,
        original_ab=original,
        shadow_sample=1.0 if any(slo.metric == "agreement" for slo in parsed) else 0.0,
        deployment=deployment[0] if deployment else None,
        deployment_target=deployment[1] if deployment else None,
    )


# --------------------------------------------------------------------------------------------- config writes


def _config_path(settings: Settings) -> Path:
    from prodai_cli.config import CONFIG_FILENAME

    return settings.path or settings.root / CONFIG_FILENAME


def _write_split(settings: Settings, plan: RolloutPlan, share: float) -> bool:
    """``stable=1-share, candidate=share`` with the stable version as fallback; True when the file changed."""
    from prodai_cli.config import edit_config

    arms = [(plan.stable, round(1.0 - share, 6)), (plan.candidate, round(share, 6))]

    shadow = plan.original_ab.get("shadow")
    if plan.shadow_sample > 0:
        # The candidate's answers compared with the stable version's (the stable's own requests are not copied:
        # a shadow on the answering version has nothing to compare).
        shadow = {"enabled": True, "version": plan.stable.version, "sample": plan.shadow_sample}

    def mutate(doc: Any) -> None:
        _set_ab(
            doc,
            enabled=True,
            model=plan.model,
            fallback=plan.stable.name,
            variants={arm.name: _variant(arm, weight) for arm, weight in arms},
            shadow=shadow,
        )

    return edit_config(_config_path(settings), mutate).written


def _variant(arm: Arm, weight: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"version": arm.version, "weight": weight}
    if arm.alias:
        entry["alias"] = arm.alias
    return entry


def _set_ab(
    doc: Any,
    *,
    enabled: bool,
    model: str | None,
    fallback: str | None,
    variants: dict[str, Any],
    shadow: dict[str, Any] | None,
) -> None:
    """Write the ``ab`` keys a rollout owns; ``shadow`` None removes the shadow section."""
    from ruamel.yaml.comments import CommentedMap

    section = doc.get("ab")
    if not isinstance(section, dict):
        section = CommentedMap()
        doc["ab"] = section
    section["enabled"] = enabled
    if model is not None:
        section["model"] = model
    if fallback is None:
        section.pop("fallback", None)
    else:
        section["fallback"] = fallback
    block = CommentedMap()
    for name, entry in variants.items():
        block[name] = CommentedMap(entry)
    section["variants"] = block
    if shadow is None:
        section.pop("shadow", None)
    else:
        section["shadow"] = CommentedMap(shadow)


def _restore(settings: Settings, plan: RolloutPlan) -> bool:
    """Put the ``ab`` section back as it was before the rollout (all traffic on the stable version)."""
    from prodai_cli.config import edit_config

    original = plan.original_ab

    def mutate(doc: Any) -> None:
        _set_ab(
            doc,
            enabled=bool(original["enabled"]),
            model=original.get("model"),
            fallback=original.get("fallback"),
            variants=original.get("variants") or {},
            shadow=original.get("shadow"),
        )

    return edit_config(_config_path(settings), mutate).written


def _write_promoted(settings: Settings, plan: RolloutPlan) -> bool:
    """After promotion: one variant, the promotion alias, on the candidate's version at weight 1."""
    from prodai_cli.config import edit_config

    arm = Arm(name=plan.promote_alias, version=plan.candidate.version, alias=plan.promote_alias)

    shadow = plan.original_ab.get("shadow")
    if shadow is not None and shadow.get("version") == plan.candidate.version:
        shadow = None  # the user's shadow was the candidate, which now answers everything itself

    def mutate(doc: Any) -> None:
        _set_ab(
            doc,
            enabled=True,
            model=plan.model,
            fallback=None,
            variants={arm.name: _variant(arm, 1.0)},
            shadow=shadow,
        )

    return edit_config(_config_path(settings), mutate).written


# --------------------------------------------------------------------------------------------- the server


@dataclass
class Server:
    """Reads a server's ``/metrics`` (with a key when it wants one)."""

    url: str
    headers: dict[str, str]

    def metrics(self) -> str:
        """The body of ``/metrics``."""
        from prodai_cli.abconfig import fetch_metrics

        return fetch_metrics(self.url, headers=self.headers)

    def require_ab_routing(self) -> None:
        """Refuse a server that cannot switch weights live (``/health`` has no ``ab`` part).

        A server picks its routing at start: one started with A/B off (or with ``--model``) serves one model
        until it restarts, so no weight a rollout writes would reach it.

        Raises:
            UsageError: The server does not route A/B.
            ProdaiError: It cannot be reached.

        """
        import httpx

        target = f"{self.url}/health"
        try:
            document = httpx.get(target, headers=self.headers, timeout=10).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProdaiError(f"Cannot read {target}: {exc}", hint="Is `prodai serve` running there?") from None
        if not isinstance(document, dict) or "ab" not in document:
            raise UsageError(
                f"The server at {self.url} does not route A/B (it started with A/B off, or with --model), so it "
                "cannot take a rollout's weights without a restart",
                hint="Once: prodai ab-set production=100% (the stable version), then restart the server; rollouts "
                "then need no restart",
            )

    def reload_state(self) -> tuple[float, float]:
        """(time of the live config's load, 1.0 when the last reload succeeded)."""
        from prodai_cli.serving.metrics import parse_exposition, sample_sum

        samples = parse_exposition(self.metrics())
        return sample_sum(samples, RELOAD_METRIC), sample_sum(samples, RELOAD_OK_METRIC)

    def wait_reloaded(self, since: float, *, timeout_s: float, sleep: Callable[[float], None]) -> None:
        """Wait until the server has loaded a config newer than ``since`` (its reload timestamp).

        Raises:
            ProdaiError: The server refused the new config, or did not load it within ``timeout_s``.

        """
        deadline = time.monotonic() + timeout_s
        while True:
            loaded, ok = self.reload_state()
            if loaded > since:
                if ok < 1:
                    raise ProdaiError("The server refused the new A/B config (prodai_config_reload_success is 0)")
                return
            if time.monotonic() > deadline:
                raise ProdaiError(
                    f"The server at {self.url} did not reload prodai.yaml within {timeout_s:.0f}s",
                    hint="Is it serving this project's prodai.yaml? Its log says why a reload was refused",
                )
            sleep(0.25)

    def baseline(self, variant: str) -> dict[str, Any]:
        """``variant``'s counters now, as the state file keeps them (the start of a step's window)."""
        return snapshot(self.metrics(), variant).to_dict()

    def window(self, baseline: dict[str, Any], variant: str, seconds: float) -> Window:
        """``variant``'s figures since ``baseline``."""
        return window(Snapshot.from_dict(baseline), snapshot(self.metrics(), variant), seconds)


class Reader(Protocol):
    """What the rollout reads: one server (:class:`Server`) or every replica of a deployment (``Replicas``)."""

    url: str

    def require_ab_routing(self) -> None: ...  # noqa: D102

    def reload_state(self) -> tuple[float, float]: ...  # noqa: D102

    def wait_reloaded(self, since: float, *, timeout_s: float, sleep: Callable[[float], None]) -> None: ...  # noqa: D102

    def baseline(self, variant: str) -> dict[str, Any]: ...  # noqa: D102

    def window(self, baseline: dict[str, Any], variant: str, seconds: float) -> Window: ...  # noqa: D102


def reader(settings: Settings, plan: RolloutPlan, api_key: str | None) -> Reader:
    """The server the plan judges, or every replica of its deployment."""
    headers = {settings.config.auth.header: api_key} if api_key else {}
    if plan.deployment:
        from prodai_cli.rollout.replicas import Replicas

        return Replicas(plan.url, headers, plan.deployment, plan.deployment_target or "docker", Server)
    return Server(plan.url, headers)


# --------------------------------------------------------------------------------------------- running


Report = Callable[[str], None]


def _apply(server: Reader, write: Callable[[], bool], sleep: Callable[[float], None]) -> None:
    """Write a config change and wait until the server has loaded it (raises when it does not)."""
    loaded_before, _ = server.reload_state()
    if write():
        server.wait_reloaded(loaded_before, timeout_s=RELOAD_TIMEOUT_S, sleep=sleep)


def _put_back(server: Reader, write: Callable[[], bool], sleep: Callable[[float], None]) -> str | None:
    """Write a restoring change whatever the server's state; the reason it was not confirmed, if it was not.

    Undoing must not depend on the server answering: the file is what every replica reloads from.
    """
    try:
        loaded_before: float | None = server.reload_state()[0]
    except ProdaiError:
        loaded_before = None
    if not write() or loaded_before is None:
        return None if loaded_before is not None else "the server did not answer; the config is restored"
    try:
        server.wait_reloaded(loaded_before, timeout_s=RELOAD_TIMEOUT_S, sleep=sleep)
    except ProdaiError as exc:
        return f"the config is restored but the server did not confirm it: {exc.message}"
    return None


def _record(settings: Settings, state: RolloutState) -> None:
    """The rollout as an MLflow run on the candidate version (a failure to record is said, not fatal)."""
    from prodai_cli.registry import Registry

    plan = state.plan
    last = state.timeline[-1]["window"] if state.timeline else {}
    metrics = {
        f"last_step_{key}": float(value)
        for key, value in last.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    metrics["steps_passed"] = float(sum(1 for entry in state.timeline if entry.get("passed")))
    try:
        registry = Registry(settings)
        state.run_id = registry.record_run(
            f"rollout-{plan.model}-v{plan.candidate.version}",
            tags={
                "prodai.action": "rollout",
                "prodai.model": plan.model,
                "prodai.version": str(plan.candidate.version),
                "prodai.rollout.status": state.status,
                "prodai.rollout.stable_version": str(plan.stable.version),
            },
            metrics=metrics,
            params={
                "steps": ",".join(f"{share:.0%}" for share in plan.steps),
                "interval_s": f"{plan.interval_s:g}",
                "slos": "; ".join(plan.slos),
                "reason": state.reason or "",
                "timeline": json.dumps(state.timeline),
            },
            failed=state.status != "succeeded",
            what="Recording the rollout",
        )
        # On the candidate version itself, as load tests are: `prodai check` shows the latest.
        registry.set_version_tags(
            plan.model,
            plan.candidate.version,
            {
                "prodai.rollout.status": state.status,
                "prodai.rollout.at": datetime.now(UTC).isoformat(timespec="seconds"),
                "prodai.rollout.run_id": state.run_id,
                "prodai.rollout.steps": f"{int(metrics['steps_passed'])}/{len(plan.steps)}",
            },
        )
    except ProdaiError as exc:
        state.reason = f"{state.reason or ''} (not recorded in the registry: {exc.message})".strip()


def _finish(settings: Settings, state: RolloutState, status: str, reason: str) -> RolloutState:
    state.status, state.reason, state.pid = status, reason, None
    _record(settings, state)
    _save(settings, state)
    return state


def _roll_back(settings: Settings, state: RolloutState, server: Reader, reason: str, sleep: Any) -> RolloutState:
    plan = state.plan
    state.reason = reason
    _save(settings, state)  # the reason first: if the write below fails, status still says what happened
    unconfirmed = _put_back(server, lambda: _restore(settings, plan), sleep)
    state.weights = {plan.stable.name: 1.0}
    return _finish(settings, state, "rolled_back", reason + (f" ({unconfirmed})" if unconfirmed else ""))


def run_rollout(
    settings: Settings,
    state: RolloutState,
    *,
    api_key: str | None = None,
    report: Report = lambda _line: None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    poll_s: float | None = None,
) -> RolloutState:
    """Walk the steps from ``state.step`` (0 for a new rollout, later for ``--resume``) to the end.

    Returns:
        The final state: ``succeeded`` (alias moved) or ``rolled_back`` (original config restored).

    Raises:
        ProdaiError: The server cannot be read or does not reload; the state file says where it stopped.

    """
    plan = state.plan
    server = reader(settings, plan, api_key)
    slos = parse_slos(plan.slos, live=True)
    poll = poll_s if poll_s is not None else min(5.0, max(0.5, plan.interval_s / 10))
    server.require_ab_routing()
    state.pid = os.getpid()
    _save(settings, state)
    while state.step < len(plan.steps):
        share = plan.steps[state.step]
        label = f"step {state.step + 1}/{len(plan.steps)} ({share:.0%} to {plan.candidate.name})"
        if state.step_started is None or state.baseline is None:
            _apply(server, functools.partial(_write_split, settings, plan, share), sleep)
            state.weights = {plan.stable.name: round(1 - share, 6), plan.candidate.name: share}
            state.step_started = clock()
            state.baseline = server.baseline(plan.candidate.name)
            _save(settings, state)
            report(f"{label}: weights set, judging for {plan.interval_s:g}s")
        else:
            report(f"{label}: resumed, {max(0.0, state.step_started + plan.interval_s - clock()):.0f}s left")
        baseline = state.baseline
        while True:
            sleep(poll)
            now = clock()
            elapsed = now - state.step_started
            current = server.window(baseline, plan.candidate.name, elapsed)
            figures = current.to_dict() | {"rps": current.figure("rps"), "avg_ms": current.figure("avg_ms")}
            for slo in slos:
                figures.setdefault(slo.key, current.figure(slo.key))
            # An agreement SLO also needs as many compared texts (copies may be shed when the server is busy).
            enough = current.requests >= plan.min_requests and (
                plan.shadow_sample <= 0 or current.compared >= plan.min_requests
            )
            if enough:
                results = evaluate(slos, figures)
                breached = [r for r in results if not r.passed]
                if breached:
                    evidence = "; ".join(f"{r.slo.text}: observed {r.slo.show(r.observed)}" for r in breached)
                    state.timeline.append(_entry(state, share, figures, results, passed=False))
                    report(f"{label}: SLO breached ({evidence}); rolling back")
                    return _roll_back(settings, state, server, f"{label}: {evidence}", sleep)
                if elapsed >= plan.interval_s:
                    state.timeline.append(_entry(state, share, figures, results, passed=True))
                    report(f"{label}: passed ({current.requests:.0f} requests)")
                    break
            elif elapsed >= plan.interval_s * STARVED_INTERVALS:
                reason = (
                    f"{label}: only {current.requests:.0f} of the candidate's requests "
                    + (f"({current.compared:.0f} compared with the stable version) " if plan.shadow_sample else "")
                    + f"in {elapsed:.0f}s (--min-requests {plan.min_requests}); nothing was shown to be safe"
                )
                state.timeline.append(_entry(state, share, figures, [], passed=False))
                report(reason + "; rolling back")
                return _roll_back(settings, state, server, reason, sleep)
        state.step += 1
        state.step_started = None
        state.baseline = None
        _save(settings, state)
    from prodai_cli.registry import Registry

    previous = Registry(settings).set_alias(plan.model, plan.promote_alias, plan.candidate.version)
    report(f"alias {plan.promote_alias} -> version {plan.candidate.version} (was {previous})")
    _apply(server, lambda: _write_promoted(settings, plan), sleep)
    state.weights = {plan.promote_alias: 1.0}
    return _finish(
        settings, state, "succeeded", f"every step passed; {plan.promote_alias} is version {plan.candidate.version}"
    )


def _entry(
    state: RolloutState, share: float, figures: dict[str, Any], results: list[Any], *, passed: bool
) -> dict[str, Any]:
    return {
        "step": state.step + 1,
        "share": share,
        "started": state.step_started,
        "window": {k: v for k, v in figures.items() if v is not None},
        "slos": [{"slo": r.slo.text, "observed": r.observed, "passed": r.passed} for r in results],
        "passed": passed,
    }


def start_state(settings: Settings, plan: RolloutPlan) -> RolloutState:
    """A new rollout's state, refusing while another one is under way.

    Raises:
        UsageError: A rollout is running (its process is alive) or was left unfinished.

    """
    refuse_if_unfinished(settings)
    return RolloutState(plan=plan)


def refuse_if_unfinished(settings: Settings) -> None:
    """Refuse a new rollout while one is running or was left unfinished (checked before planning).

    Raises:
        UsageError: There is one; the hint says how to resume or abort it.

    """
    current = load_state(settings)
    if current is not None and current.status == ACTIVE:
        who = f"its process {current.pid} is running" if _alive(current.pid) else "its process is gone"
        raise UsageError(
            f"A rollout of {current.plan.model}/{current.plan.candidate.version} is under way ({who})",
            hint="Continue it with `prodai rollout --resume` or undo it with `prodai rollout --abort`",
        )


def resumable_state(settings: Settings) -> RolloutState:
    """The unfinished rollout ``--resume`` continues.

    Raises:
        UsageError: None is unfinished, or its process still runs.

    """
    current = load_state(settings)
    if current is None or current.status != ACTIVE:
        raise UsageError("No unfinished rollout to resume", hint="See the last one with: prodai rollout status")
    if _alive(current.pid):
        raise UsageError(f"The rollout's process {current.pid} is still running", hint="Wait, or --abort it")
    return current


def abort_rollout(settings: Settings, *, api_key: str | None = None, sleep: Any = time.sleep) -> RolloutState:
    """Stop an unfinished rollout (its process too, if alive) and restore the original ``ab`` section.

    Raises:
        UsageError: No rollout is unfinished.

    """
    current = load_state(settings)
    if current is None or current.status != ACTIVE:
        raise UsageError("No unfinished rollout to abort", hint="See the last one with: prodai rollout status")
    if _alive(current.pid):
        assert current.pid is not None
        os.kill(current.pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(current.pid):
                break
            sleep(0.1)
        current = load_state(settings) or current
    plan = current.plan
    server = reader(settings, plan, api_key)
    unconfirmed = _put_back(server, lambda: _restore(settings, plan), sleep)
    current.weights = {plan.stable.name: 1.0}
    reason = "aborted by the user; the original A/B config is back"
    return _finish(settings, current, "aborted", reason + (f" ({unconfirmed})" if unconfirmed else ""))
