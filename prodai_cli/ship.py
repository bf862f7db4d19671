"""prodai ship: deploy a version beside production, load-test it, check it, and only then move the alias.

The gate, step by step (:func:`ship`):

1. Resolve REF to a registered version; note which version the alias (default ``production``) points at.
2. Create a temporary API key for the load test and the checks (when ``auth.enabled``), in the config the
   candidate reads; it is revoked and removed at the end, whatever happens.
3. Start the candidate beside production: ``--target local`` runs ``python -m prodai_cli serve --model
   NAME/VERSION`` on a free loopback port with the project's config; ``--target docker`` deploys it with
   :func:`prodai_cli.deploy.targets.deploy` as ``<deployment>-candidate`` on a free port. Either way A/B is
   switched off for the candidate (``PRODAI_AB__ENABLED=false``) so it serves exactly REF.
4. Load-test it against the SLOs (:mod:`prodai_cli.loadtest`), logging the run to the version. This phase
   runs the candidate with ``rate_limit.enabled: false``: one load generator on one IP with one key would
   otherwise measure the rate limiter (429s), not the model; auth, cache and everything else stay on.
5. Restart the candidate with the project's config exactly as written and run the whole checklist
   (:mod:`prodai_cli.checks`) against it, rate limits included.
6. Only if the load test and every required item passed: record the evidence (an MLflow run with the ship
   report, tags on the version), move the alias, and stop a local candidate (a docker candidate keeps
   running as the new deployment).

On any failure the candidate is stopped, the alias is left where it was, the report says why, and
``report.passed`` is False (the command exits 1).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prodai_cli.errors import ProdaiError, RegistryError, ShipFailed, UsageError

if TYPE_CHECKING:
    from prodai_cli.config import Settings
    from prodai_cli.registry import Registry

Target = Literal["local", "docker"]
TARGETS: tuple[Target, ...] = ("local", "docker")
SHIPS_DIRNAME = "ships"
REPORT_FILE = "report.json"
LOG_TAIL_LINES = 20
StepState = Literal["start", "ok", "failed", "skipped"]


@dataclass
class ShipStep:
    """One step of a ship and how it ended."""

    name: str
    state: StepState
    detail: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "state": self.state, "detail": self.detail, "seconds": round(self.seconds, 2)}


@dataclass
class ShipReport:
    """What a ship did and why it ended the way it did.

    Attributes:
        ref: The reference as given.
        model: Registered model name.
        version: The version shipped.
        alias: The alias that moves on success.
        previous: The version the alias pointed at before (None: unset).
        target: ``local`` or ``docker``.
        passed: The load test and every required check passed, and the alias was moved.
        reason: Why not, when not passed.
        steps: Every step in order.
        loadtest: The load-test summary (verdict per SLO, figures, report directory, MLflow run).
        checks: The checklist report of the candidate.
        url: The candidate's URL (a docker candidate keeps running there after a successful ship).
        report_dir: Where report.json and the candidate's logs are.
        run_id: The MLflow run holding the ship report.

    """

    ref: str
    model: str
    version: int
    alias: str
    previous: int | None
    target: Target
    report_dir: Path
    passed: bool = False
    reason: str = ""
    steps: list[ShipStep] = field(default_factory=list)
    loadtest: dict[str, Any] | None = None
    checks: dict[str, Any] | None = None
    url: str | None = None
    run_id: str | None = None
    started_at: str = ""
    finished_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (report.json and ``prodai ship --json``)."""
        return {
            "ref": self.ref,
            "model": self.model,
            "version": self.version,
            "alias": self.alias,
            "previous": self.previous,
            "target": self.target,
            "passed": self.passed,
            "reason": self.reason,
            "url": self.url,
            "steps": [s.to_dict() for s in self.steps],
            "loadtest": self.loadtest,
            "checks": self.checks,
            "report_dir": str(self.report_dir),
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


StepCallback = Callable[[ShipStep], None]
LoadtestEventCallback = Callable[[dict[str, Any]], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------- candidates


class Candidate(Protocol):
    """A server running the version under test."""

    url: str

    def start(self) -> None:
        """Start it and wait until ``/health/ready`` answers 200 (raise ShipFailed otherwise)."""

    def stop(self) -> None:
        """Stop it (idempotent)."""

    def logs(self) -> str:
        """Its recent log text."""


def wait_ready(url: str, timeout_s: float, alive: Callable[[], str | None]) -> float:
    """Poll ``url/health/ready`` until 200; ``alive()`` returns a reason when the server died.

    Returns:
        Seconds waited.

    Raises:
        ShipFailed: The server died or did not become ready in time.

    """
    import httpx

    started = time.monotonic()
    deadline = started + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        dead = alive()
        if dead:
            raise ShipFailed(dead)
        try:
            response = httpx.get(f"{url}/health/ready", timeout=5)
            if response.status_code == 200:
                return time.monotonic() - started
            last = f"/health/ready {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        time.sleep(0.2)
    raise ShipFailed(f"the candidate was not ready after {timeout_s:g} s ({last})")


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalCandidate:
    """``python -m prodai_cli serve --model NAME/VERSION`` on a free loopback port, with the project's config.

    Args:
        settings: The project's settings (the child runs in its root, on its config file).
        model_ref: ``NAME/VERSION``.
        log_path: Where the child's stderr (its JSON log) goes.
        env: Extra environment (config overrides) for the child.

    """

    def __init__(self, settings: Settings, model_ref: str, log_path: Path, env: dict[str, str]) -> None:
        self.settings = settings
        self.model_ref = model_ref
        self.log_path = log_path
        self.env = env
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server process and wait for readiness."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "prodai_cli"]
        if self.settings.path is not None:
            command += ["--config", str(self.settings.path)]
        command += ["serve", "--model", self.model_ref, "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # Its own session: a Ctrl-C on ship reaches ship, which then stops the child itself.
            self.proc = subprocess.Popen(
                command,
                cwd=self.settings.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        wait_ready(self.url, self.settings.config.deploy.readiness_timeout_s, self._dead)

    def _dead(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"the candidate server exited with status {self.proc.returncode}:\n{_tail(self.logs())}"
        return None

    def stop(self) -> None:
        """SIGINT (no drain delay: the candidate has no traffic to drain), then SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=self.settings.config.serving.grace_period_s + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def logs(self) -> str:
        """The child's log so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


class DockerCandidate:
    """The version deployed by :func:`prodai_cli.deploy.targets.deploy` as its own container, on a free port.

    Args:
        settings: Settings whose config file the container mounts (see :func:`loadtest_settings`).
        project: The project's settings (deployment records live there).
        model_ref: ``NAME/VERSION``.
        name: Deployment (container) name.
        on_progress: Deploy's progress lines.

    """

    def __init__(
        self, settings: Settings, project: Settings, model_ref: str, name: str, on_progress: Callable[[str], None]
    ) -> None:
        self.settings = settings
        self.project = project
        self.model_ref = model_ref
        self.name = name
        self.on_progress = on_progress
        self.url = ""
        self.started = False

    def start(self) -> None:
        """Build and run the container; deploy waits for readiness (and removes it on failure)."""
        from prodai_cli.deploy.targets import deploy

        try:
            result = deploy(
                self.settings,
                target="docker",
                model_ref=self.model_ref,
                name=self.name,
                port=free_port(),
                progress=self.on_progress,
            )
        except ProdaiError as exc:
            raise ShipFailed(f"deploying the candidate failed: {exc.message}", hint=exc.hint) from None
        self.started = True
        self.url = result.record.url

    def stop(self) -> None:
        """Stop and remove the container."""
        if not self.started:
            return
        from prodai_cli.deploy.targets import stop

        self.started = False
        stop(self.project, self.name)

    def logs(self) -> str:
        """The container's recent log lines."""
        from prodai_cli.deploy.targets import logs

        try:
            return logs(self.project, self.name, lines=1000)
        except ProdaiError:
            return ""


def loadtest_settings(settings: Settings, directory: Path) -> Settings:
    """A copy of the project's config with rate limits off, in ``directory``, for a docker candidate to mount.

    Key records are inlined (a keys file would not be beside the copy); the copy and its directory are made
    readable by the container's non-root user.
    """
    import yaml

    from prodai_cli.config import Settings as SettingsClass
    from prodai_cli.config import write_atomic
    from prodai_cli.keys import load_key_snapshot

    data = settings.config.model_dump(mode="json")
    data["rate_limit"]["enabled"] = False
    data["auth"]["keys"] = [r.model_dump(mode="json") for r in load_key_snapshot(settings).records]
    data["auth"]["keys_file"] = None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "prodai.yaml"
    write_atomic(
        path,
        "# prodai ship: the project's config with rate limits off, for the load test\n"
        + yaml.safe_dump(data, sort_keys=False),
    )
    directory.chmod(0o755)
    path.chmod(0o644)
    config = settings.config.model_validate(data)
    return SettingsClass(config=config, path=path, root=settings.root)


# --------------------------------------------------------------------------------------------- the gate


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
    keep_candidate: bool = False

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
        target: ``local`` (server processes) or ``docker``.
        on_step: Called when each step starts and ends.
        on_loadtest_event: Live load-test figures (the loadtest runner's events).

    Returns:
        The report; ``passed`` False means the alias did not move (``reason`` says why).

    Raises:
        UsageError: A bad reference, alias, target or SLO: found before anything starts.
        ModelNotFoundError: REF is not in the registry.
        DeployError: ``--target docker`` without a reachable Docker engine.

    """
    from prodai_cli.registry import Registry, validate_alias
    from prodai_cli.slo import parse_duration, parse_slos

    if target not in TARGETS:
        raise UsageError(f"Unknown target {target!r}; choose local or docker")
    validate_alias(alias)
    check_cfg = settings.config.check
    slo_texts = list(slos or check_cfg.ship_slo or settings.config.loadtest.slo)
    parse_slos(slo_texts)  # a typo is a usage error now, not a failed ship in a minute
    if parse_duration(check_cfg.ship_warmup, allow_zero=True) >= parse_duration(check_cfg.ship_duration):
        raise UsageError("check.ship_warmup must be shorter than check.ship_duration")
    registry = Registry(settings)
    info = registry.get_version(ref)
    previous = _alias_version(registry, info.name, alias)
    if target == "docker":
        from prodai_cli.deploy.engine import docker_client

        docker_client()  # no engine: a clear DeployError before anything is created
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report_dir = settings.state_dir / SHIPS_DIRNAME / f"{stamp}-{_safe(info.name)}-v{info.version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    report = ShipReport(
        ref=ref,
        model=info.name,
        version=info.version,
        alias=alias,
        previous=previous,
        target=target,
        report_dir=report_dir,
        started_at=_now(),
    )
    run = _Run(settings, report, on_step or (lambda _step: None))
    try:
        _gate(run, registry, slo_texts, on_loadtest_event)
    except ProdaiError as exc:  # ShipFailed, and a registry, deploy or load-test error on the way
        report.reason = exc.message
    finally:
        _cleanup(run)
        report.finished_at = _now()
        _write_report(report)
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

    with run.step("promote", f"Recording the evidence and moving {report.alias}") as step:
        report.passed = True
        _write_report(report)
        report.run_id = _record_run(registry, report)
        try:
            registry.set_alias(report.model, report.alias, report.version)
        except ProdaiError:
            report.passed = False
            raise
        try:
            registry.set_version_tags(report.model, report.version, _ship_tags(report))
        except ProdaiError:
            # The evidence must sit on the version the alias names: put the alias back.
            report.passed = False
            if report.previous is not None:
                registry.set_alias(report.model, report.alias, report.previous)
            raise
        with contextlib.suppress(ProdaiError):
            _tag_run(registry, report.run_id, {"prodai.ship.promoted": "true"})
        was = f"was v{report.previous}" if report.previous is not None else "was unset"
        step.detail = f"{report.model}@{report.alias} -> v{report.version} ({was}); run {report.run_id}"
        # A/B variants set by this alias do not follow it (docs/ab.md): say so where the user looks.
        from prodai_cli.abconfig import resplit_command, stale_variants

        stale = stale_variants(settings.config, lambda model, alias: _alias_version(registry, model, alias))
        if stale:
            shown = "; ".join(s.describe(settings.config.ab.model or report.model) for s in stale)
            step.detail += f"; STALE: {shown}: run {resplit_command(settings.config)}"
    run.keep_candidate = report.target == "docker"


def _candidate(run: _Run, model_ref: str, *, phase: str, rate_limits: bool) -> Candidate:
    report = run.report
    env = {"PRODAI_AB__ENABLED": "false"}
    if report.target == "local":
        if not rate_limits:
            env["PRODAI_RATE_LIMIT__ENABLED"] = "false"
        return LocalCandidate(run.settings, model_ref, report.report_dir / f"candidate-{phase}.log", env)
    from prodai_cli.deploy.plan import docker_name

    # The name prodai deploy gives this model's deployment, so the candidate sits visibly beside it.
    base = run.settings.config.deploy.name or f"prodai-{docker_name(report.model)}"
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
    """Stop the candidate (unless it is the new docker deployment) and forget the temporary key."""
    errors = []
    if run.candidate is not None and not run.keep_candidate:
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


def _write_report(report: ShipReport) -> None:
    from prodai_cli.config import write_atomic

    write_atomic(report.report_dir / REPORT_FILE, json.dumps(report.to_dict(), indent=2, default=str) + "\n")


def _ship_tags(report: ShipReport) -> dict[str, str]:
    tags = {
        "prodai.ship.passed": "true" if report.passed else "false",
        "prodai.ship.at": _now(),
        "prodai.ship.alias": report.alias,
        "prodai.ship.target": report.target,
        "prodai.ship.previous": "" if report.previous is None else str(report.previous),
    }
    if report.run_id:
        tags["prodai.ship.run_id"] = report.run_id
    if not report.passed:
        tags["prodai.ship.reason"] = report.reason[:500]
    return tags


def _record_run(registry: Registry, report: ShipReport) -> str:
    """An MLflow run (experiment ``prodai``) with the ship report and the candidate's logs as artifacts."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    client = registry.client
    experiment_id = registry.experiment_id()
    stats = (report.loadtest or {}).get("stats") or {}
    now_ms = int(time.time() * 1000)
    metrics = [
        Metric(f"loadtest_{key}", float(value), now_ms, 0)
        for key, value in stats.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    params = [
        Param("alias", report.alias),
        Param("target", report.target),
        Param("previous_version", "" if report.previous is None else str(report.previous)),
        Param("slos", ", ".join(s.get("slo", "") for s in (report.loadtest or {}).get("slos") or [])[:6000]),
    ]
    try:
        run = client.create_run(
            experiment_id,
            run_name=f"ship-{report.model}-v{report.version}",
            tags={
                "prodai.action": "ship",
                "prodai.model": report.model,
                "prodai.version": str(report.version),
                "prodai.ship.passed": "true" if report.passed else "false",
                "prodai.ship.alias": report.alias,
            },
        )
        run_id = str(run.info.run_id)
        client.log_batch(run_id, metrics=metrics, params=params)
        for path in sorted(report.report_dir.iterdir()):
            if path.is_file():
                client.log_artifact(run_id, str(path), artifact_path="ship")
        client.set_terminated(run_id, "FINISHED" if report.passed else "FAILED")
    except MlflowException as exc:
        raise RegistryError(f"Recording the ship report failed: {str(exc).splitlines()[0]}") from None
    return run_id


def _tag_run(registry: Registry, run_id: str | None, tags: dict[str, str]) -> None:
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return
    try:
        for key, value in tags.items():
            registry.client.set_tag(run_id, key, value)
    except MlflowException as exc:
        raise RegistryError(f"Tagging run {run_id} failed: {str(exc).splitlines()[0]}") from None


def _record_failure(run: _Run, registry: Registry) -> None:
    """A failed ship is evidence too: a run with the report, and tags on the version (never the alias)."""
    report = run.report
    try:
        report.run_id = _record_run(registry, report)
        registry.set_version_tags(report.model, report.version, _ship_tags(report))
    except ProdaiError as exc:
        report.reason += f" (and the failure was not recorded in the registry: {exc.message})"
    _write_report(report)


def _alias_version(registry: Registry, name: str, alias: str) -> int | None:
    from prodai_cli.errors import ModelNotFoundError
    from prodai_cli.refs import ModelRef

    try:
        return registry.get_version(ModelRef(name=name, alias=alias)).version
    except ModelNotFoundError:
        return None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
