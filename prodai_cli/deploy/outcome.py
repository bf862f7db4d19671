"""What every deploy target hands back, and the small pieces all targets share (records, written files)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.deploy import records
from prodai_cli.deploy.containers import BuiltImage
from prodai_cli.deploy.plan import DeployPlan
from prodai_cli.deploy.records import DeploymentRecord
from prodai_cli.errors import DeployError

if TYPE_CHECKING:
    from prodai_cli.config import Settings

Progress = Callable[[str], None]


@dataclass
class DeployResult:
    """What a deploy did."""

    record: DeploymentRecord
    plan: DeployPlan
    context_dir: Path | None
    image: BuiltImage | None
    ready_after_s: float | None = None
    files: list[str] = field(default_factory=list)
    started: bool = False
    next_steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            **self.record.to_dict(),
            "context_dir": str(self.context_dir) if self.context_dir else None,
            "ready_after_s": round(self.ready_after_s, 2) if self.ready_after_s is not None else None,
            "files": self.files,
            "started": self.started,
            "warnings": self.plan.warnings,
            "next_steps": self.next_steps,
        }


def display_host(host: str) -> str:
    """The address a client on this host uses for ``host`` (a wildcard bind means loopback)."""
    return "127.0.0.1" if host in {"", "0.0.0.0", "::"} else host


def write_files(directory: Path, files: dict[str, str]) -> list[str]:
    """Write ``files`` (relative path -> text) under ``directory`` atomically; returns their paths."""
    from prodai_cli.config import write_atomic

    directory.mkdir(parents=True, exist_ok=True)
    for relative, text in files.items():
        write_atomic(directory / relative, text)
    return [str(directory / relative) for relative in files]


def files_record(
    plan: DeployPlan, image: BuiltImage | None, target: str, url: str, directory: Path
) -> DeploymentRecord:
    """The record of a deployment described by files (compose stack, k8s manifests)."""
    before = records.load(plan.settings, plan.name)
    return DeploymentRecord(
        name=plan.name,
        url=url,
        model=plan.model,
        version=plan.version,
        target=target,
        image=plan.tag,
        container_id=None,
        previous_image=before.image_id if before else None,
        created=records.now_iso(),
        image_id=image.id if image else None,
        versions=plan.versions,
        config_hash=plan.config_hash,
        image_size_bytes=image.size_bytes if image else None,
        files_dir=str(directory),
    )


def record_or_error(settings: Settings, name: str) -> DeploymentRecord:
    """The record of ``name``, or a DeployError naming the deployments there are."""
    record = records.load(settings, name)
    if record is None:
        known = ", ".join(r.name for r in records.list_records(settings)) or "none"
        raise DeployError(f"No deployment named {name!r}", hint=f"Deployments here: {known}")
    return record
