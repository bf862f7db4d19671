"""What a ship did: its steps, its report (report.json), and the evidence it leaves in the registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prodai_cli.errors import RegistryError

if TYPE_CHECKING:
    from prodai_cli.registry import Registry

Target = Literal["local", "docker", "compose"]
TARGETS: tuple[Target, ...] = ("local", "docker", "compose")
SHIPS_DIRNAME = "ships"
REPORT_FILE = "report.json"
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
        url: The candidate's URL (removed at the end, whatever happens).
        production_url: Where the production deployment serves the new version (docker, compose).
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
    production_url: str | None = None
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
            "production_url": self.production_url,
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


def now() -> str:
    """Now, ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_report(report: ShipReport) -> None:
    """Write report.json atomically."""
    from prodai_cli.config import write_atomic

    write_atomic(report.report_dir / REPORT_FILE, json.dumps(report.to_dict(), indent=2, default=str) + "\n")


def ship_tags(report: ShipReport) -> dict[str, str]:
    """The tags a ship leaves on the version it shipped."""
    tags = {
        "prodai.ship.passed": "true" if report.passed else "false",
        "prodai.ship.at": now(),
        "prodai.ship.alias": report.alias,
        "prodai.ship.target": report.target,
        "prodai.ship.previous": "" if report.previous is None else str(report.previous),
    }
    if report.run_id:
        tags["prodai.ship.run_id"] = report.run_id
    if not report.passed:
        tags["prodai.ship.reason"] = report.reason[:500]
    return tags


def record_run(registry: Registry, report: ShipReport) -> str:
    """An MLflow run (experiment ``prodai``) with the ship report and the candidate's logs as artifacts."""
    stats = (report.loadtest or {}).get("stats") or {}
    metrics = {
        f"loadtest_{key}": float(value)
        for key, value in stats.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    params = {
        "alias": report.alias,
        "target": report.target,
        "previous_version": "" if report.previous is None else str(report.previous),
        "slos": ", ".join(s.get("slo", "") for s in (report.loadtest or {}).get("slos") or []),
    }
    return registry.record_run(
        f"ship-{report.model}-v{report.version}",
        tags={
            "prodai.action": "ship",
            "prodai.model": report.model,
            "prodai.version": str(report.version),
            "prodai.ship.passed": "true" if report.passed else "false",
            "prodai.ship.alias": report.alias,
        },
        metrics=metrics,
        params=params,
        artifacts=sorted(p for p in report.report_dir.iterdir() if p.is_file()),
        artifact_path="ship",
        failed=not report.passed,
        what="Recording the ship report",
    )


def tag_run(registry: Registry, run_id: str | None, tags: dict[str, str]) -> None:
    """Add ``tags`` to run ``run_id`` (None: nothing to tag)."""
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return
    try:
        for key, value in tags.items():
            registry.client.set_tag(run_id, key, value)
    except MlflowException as exc:
        raise RegistryError(f"Tagging run {run_id} failed: {str(exc).splitlines()[0]}") from None
