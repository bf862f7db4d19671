"""The ship gate: candidate, load test, checklist, then promotion and the alias, or nothing at all."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.errors import ProdaiError, ShipFailed, UsageError
from prodai_cli.ship.candidates import Candidate, DockerCandidate, LocalCandidate, loadtest_settings
from prodai_cli.ship.report import (
    SHIPS_DIRNAME,
    TARGETS,
    LoadtestEventCallback,
    ShipReport,
    ShipStep,
    StepCallback,
    Target,
    now,
    record_run,
    ship_tags,
    tag_run,
    write_report,
)

if TYPE_CHECKING:
    from prodai_cli.config import Settings
    from prodai_cli.registry import Registry


@dataclass
class _Run:
    """Mutable state of one ship (what the steps share)."""

    settings: Settings
    report: ShipReport
    on_step: StepCallback
    probe_key: str | None = None
    probe_name: str | None = None
    created_config: Path | None = None
    candidate: Candidate | None = None

    @contextlib.contextmanager
    def step(self, name: str, start: str) -> Iterator[ShipStep]:
        """Run one step: report it started, then ok (or failed, re-raising)."""
        current = ShipStep(name, "start", start)
        self.on_step(current)
        began = time.monotonic()
        try:
            yield current
        except BaseException as exc:
            message = exc.message if isinstance(exc, ProdaiError) else f"{type(exc).__name__}: {exc}"
            done = ShipStep(name, "failed", message.splitlines()[0] if message else "", time.monotonic() - began)
            self.report.steps.append(done)
            self.on_step(done)
            raise
        done = ShipStep(name, "ok", current.detail, time.monotonic() - began)
        self.report.steps.append(done)
        self.on_step(done)


def ship(
    settings: Settings,
    ref: str,
    *,
    alias: str = "production",
    slos: list[str] | None = None,
    target: Target = "local",
    on_step: StepCallback | None = None,
    on_loadtest_event: LoadtestEventCallback | None = None,
) -> ShipReport:
    """Deploy REF beside production, load-test and check it, and move ``alias`` to it only if all pass.

    Args:
        settings: The project's settings.
        ref: ``NAME/VERSION``, ``NAME@ALIAS`` or ``NAME`` (latest).
        alias: The alias to move on success.
        slos: SLO expressions (default ``check.ship_slo``, then ``loadtest.slo``).
        target: ``local`` (server processes), ``docker`` or ``compose`` (a docker candidate, then a
            zero-downtime roll-out to the production deployment of that target before the alias moves).
        on_step: Called when each step starts and ends.
        on_loadtest_event: Live load-test figures (the loadtest runner's events).

    Returns:
        The report; ``passed`` False means the alias did not move (``reason`` says why).

    Raises:
        UsageError: A bad reference, alias, target or SLO: found before anything starts.
        ModelNotFoundError: REF is not in the registry.
        DeployError: ``--target docker|compose`` without a reachable Docker engine.

    """
    from prodai_cli.registry import Registry, path_safe, validate_alias
    from prodai_cli.slo import parse_duration, parse_slos

    if target not in TARGETS:
        raise UsageError(f"Unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    validate_alias(alias)
    check_cfg = settings.config.check
    slo_texts = list(slos or check_cfg.ship_slo or settings.config.loadtest.slo)
    parse_slos(slo_texts)  # a typo is a usage error now, not a failed ship in a minute
    if parse_duration(check_cfg.ship_warmup, allow_zero=True) >= parse_duration(check_cfg.ship_duration):
        raise UsageError("check.ship_warmup must be shorter than check.ship_duration")
    registry = Registry(settings)
    info = registry.get_version(ref)
    previous = _alias_version(registry, info.name, alias)
    if target != "local":
        from prodai_cli.deploy.containers import docker_client

        docker_client()  # no engine: a clear DeployError before anything is created
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report_dir = settings.state_dir / SHIPS_DIRNAME / f"{stamp}-{path_safe(info.name)}-v{info.version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    report = ShipReport(
        ref=ref,
        model=info.name,
        version=info.version,
        alias=alias,
        previous=previous,
        target=target,
        report_dir=report_dir,
        started_at=now(),
    )
    run = _Run(settings, report, on_step or (lambda _step: None))
    try:
        _gate(run, registry, slo_texts, on_loadtest_event)
    except ProdaiError as exc:  # ShipFailed, and a registry, deploy or load-test error on the way
        report.reason = exc.message
    finally:
        _cleanup(run)
        report.finished_at = now()
        write_report(report)
    if not report.passed:
        _record_failure(run, registry)
    return report


def _gate(run: _Run, registry: Registry, slo_texts: list[str], on_event: LoadtestEventCallback | None) -> None:
    report = run.report
    model_ref = f"{report.model}/{report.version}"
    if run.settings.config.auth.enabled:
        with run.step("key", "Creating a temporary API key for the load test and the checks") as step:
            _create_probe_key(run)
            step.detail = f"{run.probe_name} (revoked and removed at the end)"
    settings = run.settings

    with run.step("deploy", f"Starting {model_ref} beside {report.alias} for the load test") as step:
        run.candidate = _candidate(run, model_ref, phase="loadtest", rate_limits=False)
        run.candidate.start()
        report.url = run.candidate.url
        step.detail = f"{run.candidate.url} (rate limits off for the load test)"

    with run.step("loadtest", f"Load-testing against {', '.join(slo_texts)}") as step:
        result = _loadtest(settings, run, model_ref, slo_texts, on_event)
        step.detail = _loadtest_line(result)
        if not result["passed"]:
            raise ShipFailed(f"the load test failed: {step.detail}")

    with run.step("redeploy", "Restarting the candidate with the config as written (rate limits on)") as step:
        assert run.candidate is not None
        run.candidate.stop()
        run.candidate = _candidate(run, model_ref, phase="check", rate_limits=True)
        run.candidate.start()
        report.url = run.candidate.url
        step.detail = run.candidate.url

    with run.step("check", "Running the production checklist") as step:
        checks = _check(run)
        report.checks = checks.to_dict()
        counts = ", ".join(f"{n} {s}" for s, n in checks.counts().items() if n)
        step.detail = counts
        if not checks.passed:
            problems = ", ".join(f"{r.item} ({r.status})" for r in checks.blocking)
            raise ShipFailed(f"required checks did not pass: {problems}")

    if report.target in ("docker", "compose"):
        with run.step("production", f"Rolling {model_ref} out to production") as step:
            step.detail = _promote_deployment(run, model_ref)

    with run.step("promote", f"Recording the evidence and moving {report.alias}") as step:
        report.passed = True
        write_report(report)
        report.run_id = record_run(registry, report)
        try:
            registry.set_alias(report.model, report.alias, report.version)
        except ProdaiError:
            report.passed = False
            raise
        try:
            registry.set_version_tags(report.model, report.version, ship_tags(report))
        except ProdaiError:
            # The evidence must sit on the version the alias names: put the alias back.
            report.passed = False
            if report.previous is not None:
                registry.set_alias(report.model, report.alias, report.previous)
            raise
        with contextlib.suppress(ProdaiError):
            tag_run(registry, report.run_id, {"prodai.ship.promoted": "true"})
        was = f"was v{report.previous}" if report.previous is not None else "was unset"
        step.detail = f"{report.model}@{report.alias} -> v{report.version} ({was}); run {report.run_id}"
        # A/B variants set by this alias do not follow it (docs/ab.md): say so where the user looks.
        from prodai_cli.abconfig import resplit_command, stale_variants

        stale = stale_variants(settings.config, lambda model, alias: _alias_version(registry, model, alias))
        if stale:
            shown = "; ".join(s.describe(settings.config.ab.model or report.model) for s in stale)
            step.detail += f"; STALE: {shown}: run {resplit_command(settings.config)}"


def production_name(settings: Settings, model: str) -> str:
    """The deployment ``prodai deploy`` makes for ``model``: ``deploy.name``, else ``prodai-<model>``."""
    from prodai_cli.deploy.plan import docker_name

    return settings.config.deploy.name or f"prodai-{docker_name(model)}"


def _promote_deployment(run: _Run, model_ref: str) -> str:
    """Roll the gated version out to the production deployment (its configured name and port).

    The same zero-downtime roll-out as ``prodai deploy``: the new replicas serve before the old ones stop,
    and when they fail the old ones keep serving and the ship fails with the alias unmoved.
    """
    from prodai_cli.deploy.lifecycle import deploy

    report = run.report
    name = production_name(run.settings, report.model)

    def progress(line: str) -> None:
        run.on_step(ShipStep("production", "start", line))

    try:
        result = deploy(run.settings, target=report.target, model_ref=model_ref, name=name, progress=progress)
    except ProdaiError as exc:
        raise ShipFailed(f"rolling out to production ({name}) failed: {exc.message}", hint=exc.hint) from None
    report.production_url = result.record.url
    return f"{name} serves {model_ref} at {result.record.url}"


def _candidate(run: _Run, model_ref: str, *, phase: str, rate_limits: bool) -> Candidate:
    report = run.report
    env = {"PRODAI_AB__ENABLED": "false"}
    if report.target == "local":
        if not rate_limits:
            env["PRODAI_RATE_LIMIT__ENABLED"] = "false"
        return LocalCandidate(run.settings, model_ref, report.report_dir / f"candidate-{phase}.log", env)
    # Named after the production deployment, so the candidate sits visibly beside it.
    base = production_name(run.settings, report.model)
    mounted = run.settings if rate_limits else loadtest_settings(run.settings, report.report_dir / "loadtest-config")

    def progress(line: str) -> None:
        run.on_step(ShipStep("deploy", "start", line))

    return DockerCandidate(mounted, run.settings, model_ref, f"{base}-candidate", progress)


def _create_probe_key(run: _Run) -> None:
    from prodai_cli.config import load_settings
    from prodai_cli.keys import create_key

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    name = f"{run.settings.config.check.probe_key_name}-ship-{stamp}"
    created = create_key(run.settings, name, ["predict"], expires_days=1)
    run.probe_key, run.probe_name = created.key, name
    if run.settings.path is None:
        # The key went into a new ./prodai.yaml: from now on that file is the project's config.
        run.created_config = created.stored_in
        run.settings = load_settings(created.stored_in)


def _loadtest(
    settings: Settings, run: _Run, model_ref: str, slo_texts: list[str], on_event: LoadtestEventCallback | None
) -> dict[str, Any]:
    from prodai_cli.loadtest.plan import build_plan
    from prodai_cli.loadtest.runner import run_loadtest

    assert run.candidate is not None
    cfg = settings.config.check
    plan = build_plan(
        settings,
        url=run.candidate.url,
        model=model_ref,
        slos=slo_texts,
        duration=cfg.ship_duration,
        warmup=cfg.ship_warmup,
        users=cfg.ship_users,
        api_key=run.probe_key,
        report_dir=run.report.report_dir / "loadtest",
        scale_latency=cfg.ship_scale_latency,
    )
    result = run_loadtest(settings, plan, on_event=on_event, log_to_registry=True)
    summary = result.summary
    run.report.loadtest = {
        "passed": result.passed,
        "failed": [r.describe() for r in result.failed],
        "problems": summary.get("problems") or [],
        "slos": summary.get("slos"),
        "stats": summary.get("stats"),
        "report_dir": str(result.report_dir),
        "run_id": result.run_id,
        "mlflow": summary.get("mlflow"),
        "latency_scale": summary.get("latency_scale"),
    }
    return run.report.loadtest


def _loadtest_line(loadtest: dict[str, Any]) -> str:
    from prodai_cli.slo import parse_slo

    shown = []
    for slo in loadtest.get("slos") or []:
        parsed = parse_slo(str(slo["slo"]))
        observed = parsed.show(slo.get("observed"))
        scale = float(slo.get("scale") or 1.0)
        allowed = f" (allowed {parsed.show(slo.get('allowed'))})" if scale != 1.0 else ""
        shown.append(f"{slo['slo']}: {observed}{allowed} {'ok' if slo.get('passed') else 'FAILED'}")
    problems = loadtest.get("problems") or []
    requests = (loadtest.get("stats") or {}).get("requests")
    scale_info = loadtest.get("latency_scale") or {}
    machine = (
        f", machine load x{scale_info['factor']:.2g}"
        if scale_info.get("applied") and scale_info.get("factor") is not None
        else ""
    )
    counted = f" ({requests} requests{machine})" if requests is not None else ""
    return "; ".join(shown + list(problems)) + counted


def _check(run: _Run) -> Any:
    from prodai_cli.checks import CheckContext, CheckTarget, run_checks

    assert run.candidate is not None
    candidate = run.candidate
    target = CheckTarget(candidate.url, None, candidate.logs, manage_keys=False)
    with CheckContext(run.settings, target, probe_key=run.probe_key, pending_alias=run.report.alias) as ctx:
        return run_checks(ctx)


def _cleanup(run: _Run) -> None:
    """Stop the candidate (production runs its own replicas now) and forget the temporary key."""
    errors = []
    if run.candidate is not None:
        step = ShipStep("stop", "start", "Stopping the candidate")
        run.on_step(step)
        began = time.monotonic()
        try:
            run.candidate.stop()
        except ProdaiError as exc:
            errors.append(f"stopping the candidate failed: {exc.message}")
        else:
            done = ShipStep("stop", "ok", "", time.monotonic() - began)
            run.report.steps.append(done)
            run.on_step(done)
    if run.probe_name is not None:
        from prodai_cli.checks.context import forget_key

        try:
            forget_key(run.settings, run.probe_name)
        except ProdaiError as exc:
            errors.append(f"revoke the temporary key by hand (prodai keys revoke {run.probe_name}): {exc.message}")
        else:
            _remove_if_only_for_the_key(run.created_config)
    if errors:
        note = "; ".join(errors)
        run.report.reason = f"{run.report.reason}; {note}" if run.report.reason else note


def _remove_if_only_for_the_key(path: Path | None) -> None:
    """Delete a config file ship created only to hold its temporary key (embedded defaults stay defaults)."""
    if path is None:
        return
    import yaml

    with contextlib.suppress(OSError, yaml.YAMLError):
        if yaml.safe_load(path.read_text(encoding="utf-8")) in ({"auth": {}}, {"auth": {"keys": []}}):
            path.unlink()


def _record_failure(run: _Run, registry: Registry) -> None:
    """A failed ship is evidence too: a run with the report, and tags on the version (never the alias)."""
    report = run.report
    try:
        report.run_id = record_run(registry, report)
        registry.set_version_tags(report.model, report.version, ship_tags(report))
    except ProdaiError as exc:
        report.reason += f" (and the failure was not recorded in the registry: {exc.message})"
    write_report(report)


def _alias_version(registry: Registry, name: str, alias: str) -> int | None:
    from prodai_cli.errors import ModelNotFoundError
    from prodai_cli.refs import ModelRef

    try:
        return registry.get_version(ModelRef(name=name, alias=alias)).version
    except ModelNotFoundError:
        return None
