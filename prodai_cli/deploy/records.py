"""Deployment records: ``.prodai/deployments/<name>.json``, what prodai deployed where.

Other areas read these files (load tests take the URL, the checklist the image and version): the keys
``name, url, model, version, target, image, container_id, previous_image, created`` are a contract.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prodai_cli.config import Settings

RECORDS_DIRNAME = "deployments"


@dataclass
class DeploymentRecord:
    """One deployment.

    Attributes:
        name: Deployment (and container) name.
        url: Where the server answers (docker target), or the manifests' directory otherwise.
        model: Registered model name.
        version: The version the server serves (the highest-weight variant under A/B).
        target: ``docker``, ``compose`` or ``k8s``.
        image: The image tag.
        container_id: The running container (docker target), else None.
        previous_image: The image ID that ran before this deployment, for rollback.
        created: ISO timestamp.

    """

    name: str
    url: str
    model: str
    version: int
    target: str
    image: str
    container_id: str | None
    previous_image: str | None
    created: str
    image_id: str | None = None
    versions: list[int] = field(default_factory=list)
    status: str = "running"
    port: int | None = None
    config_hash: str | None = None
    image_size_bytes: int | None = None
    files_dir: str | None = None
    # How the container was started (mounts, env, user), so rollback starts the previous image the same way.
    run: dict[str, Any] = field(default_factory=dict)
    # The run spec that belongs to previous_image (its own model ref and env): a rollback must run the
    # previous image exactly as it ran before, not with the current image's env (issue 14, item 1).
    previous_run: dict[str, Any] = field(default_factory=dict)
    # docker target: the server replicas' container IDs, the balancer's container name and stats page,
    # and the deployment's network.
    replicas: list[str] = field(default_factory=list)
    balancer: str | None = None
    stats_url: str | None = None
    network: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentRecord:
        """Read a record, ignoring keys a newer prodai may have added."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def now_iso() -> str:
    """The current UTC time as an ISO timestamp (seconds)."""
    return datetime.now(tz=UTC).isoformat(timespec="seconds")


def records_dir(settings: Settings) -> Path:
    """``.prodai/deployments/`` of this project."""
    return settings.state_dir / RECORDS_DIRNAME


def record_path(settings: Settings, name: str) -> Path:
    """The record file of deployment ``name``."""
    return records_dir(settings) / f"{name}.json"


def save(settings: Settings, record: DeploymentRecord) -> Path:
    """Write a record atomically; returns its path."""
    from prodai_cli.config import write_atomic

    path = record_path(settings, record.name)
    write_atomic(path, json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def load(settings: Settings, name: str) -> DeploymentRecord | None:
    """The record of ``name``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(record_path(settings, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return DeploymentRecord.from_dict(data) if isinstance(data, dict) else None


def list_records(settings: Settings) -> list[DeploymentRecord]:
    """Every readable record, sorted by name."""
    directory = records_dir(settings)
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(directory.glob("*.json")):
        record = load(settings, path.stem)
        if record is not None:
            out.append(record)
    return out
