"""What prodai knows about a registered version without importing MLflow.

Two things live here, both stdlib only (MLflow's import plus its SQLite session cost seconds per command):

- the integrity manifest of a cached version (``.prodai/models/NAME/VERSION/files.sha256.json``): the
  SHA-256 of every file, written when the version is cached and checked before the files are served,
  baked into an image or used by a batch job; its own digest is recorded on the version in the registry
  (tag ``prodai.files_sha256``) at registration, so a re-download is checked against it too;
- read-only lookups of a version (by number, alias or latest) in the embedded SQLite registry, used when
  the tracking URI is a local ``sqlite:`` file; anything unexpected there returns None and the caller
  asks MLflow instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FILE = "files.sha256.json"
DIGEST_TAG = "prodai.files_sha256"
# Files of the cache directory that are not the model: the sidecar and the manifest itself.
_NOT_HASHED = frozenset({"version.json", MANIFEST_FILE})
# A version MLflow deleted keeps its row with this stage (mlflow.entities.model_registry.model_version_stages).
_DELETED_STAGE = "Deleted_Internal"


# -------------------------------------------------------------------------------------- integrity


def hash_files(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (posix relative path -> hex digest), sidecars excluded."""
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative in _NOT_HASHED or not path.is_file() or path.is_symlink():
            continue
        with open(path, "rb") as handle:
            files[relative] = hashlib.file_digest(handle, "sha256").hexdigest()
    return files


def manifest_digest(files: dict[str, str]) -> str:
    """One digest for a whole manifest (what the registry records at registration)."""
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_manifest(root: Path) -> str:
    """Hash ``root``'s files into its manifest (atomically) and return the manifest's digest."""
    files = hash_files(root)
    digest = manifest_digest(files)
    body = json.dumps({"format": 1, "algorithm": "sha256", "digest": digest, "files": files}, indent=1)
    tmp = root / f".{MANIFEST_FILE}.tmp{os.getpid()}"
    tmp.write_text(body + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST_FILE)
    return digest


def check_files(root: Path, expected_digest: str | None = None) -> list[str]:
    """What is wrong with a cached version's files (empty when they match their manifest).

    Args:
        root: The cache directory of one version.
        expected_digest: The manifest digest the registry recorded, when known; a manifest with another
            digest is itself wrong.

    Returns:
        Short reasons, one per problem (``model/model.safetensors changed``, ``no manifest``...).

    """
    try:
        data = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
        recorded = data["files"]
        if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
            raise ValueError("files is not a mapping of digests")
    except FileNotFoundError:
        return [f"it has no {MANIFEST_FILE}"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"its {MANIFEST_FILE} is unreadable"]
    problems: list[str] = []
    if expected_digest and manifest_digest(recorded) != expected_digest:
        problems.append(f"its {MANIFEST_FILE} differs from the hashes the registry recorded")
    actual = hash_files(root)
    for name in sorted(set(recorded) | set(actual)):
        if name not in actual:
            problems.append(f"{name} is missing")
        elif name not in recorded:
            problems.append(f"{name} was added")
        elif actual[name] != recorded[name]:
            problems.append(f"{name} changed")
    return problems


# -------------------------------------------------------------------------------------- SQLite lookups


@dataclass(frozen=True)
class VersionRow:
    """A registered version as the embedded SQLite registry stores it."""

    name: str
    version: int
    aliases: list[str]
    tags: dict[str, str]
    description: str
    created_ms: int | None
    source: str
    run_id: str | None


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` tracking URI (None for any other store)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri[len(prefix) :].split("?", 1)[0]
    return Path(path) if path else None


def lookup_version(
    database: Path, name: str, *, version: int | None = None, alias: str | None = None
) -> VersionRow | None:
    """Find one READY version in MLflow's SQLite store, read-only (None: not found or not understood).

    Args:
        database: The ``mlflow.db`` file.
        name: Registered model name.
        version: A version number; with neither ``version`` nor ``alias``, the latest version.
        alias: An alias of the model.

    Returns:
        The version, or None when the file, the model, the alias or the version is missing, or the schema is
        not the one this was written against: the caller then asks MLflow, whose errors explain.

    """
    if not database.is_file():
        return None
    try:
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error:
        return None
    try:
        return _lookup(connection, name, version, alias)
    except (sqlite3.Error, ValueError, TypeError):
        return None
    finally:
        connection.close()


def _lookup(connection: sqlite3.Connection, name: str, version: int | None, alias: str | None) -> VersionRow | None:
    live = "name = ? AND (current_stage IS NULL OR current_stage != ?)"
    if alias is not None:
        rows = connection.execute(
            "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", (name, alias)
        ).fetchall()
        if len(rows) != 1:  # missing, or several workspaces: MLflow knows which one is meant
            return None
        version = int(rows[0][0])
    if version is None:
        row = connection.execute(f"SELECT MAX(version) FROM model_versions WHERE {live}", (name, _DELETED_STAGE))
        found = row.fetchone()
        if not found or found[0] is None:
            return None
        version = int(found[0])
    rows = connection.execute(
        f"SELECT version, creation_time, description, source, run_id, status FROM model_versions "
        f"WHERE {live} AND version = ?",
        (name, _DELETED_STAGE, version),
    ).fetchall()
    if len(rows) != 1 or rows[0][5] != "READY":
        return None
    number, created, description, source, run_id, _status = rows[0]
    tags = dict(
        connection.execute(
            'SELECT "key", value FROM model_version_tags WHERE name = ? AND version = ?', (name, number)
        ).fetchall()
    )
    aliases = [
        str(a)
        for (a,) in connection.execute(
            "SELECT alias FROM registered_model_aliases WHERE name = ? AND version = ?", (name, number)
        ).fetchall()
    ]
    return VersionRow(
        name=name,
        version=int(number),
        aliases=sorted(aliases),
        tags={str(k): str(v) for k, v in tags.items() if v is not None},
        description=str(description or ""),
        created_ms=int(created) if created is not None else None,
        source=str(source or ""),
        run_id=str(run_id) if run_id else None,
    )


def as_version_fields(row: VersionRow) -> dict[str, Any]:
    """The row as keyword arguments of the registry's version record (task taken from its tag)."""
    return {
        "name": row.name,
        "version": row.version,
        "aliases": row.aliases,
        "task": row.tags.get("prodai.task"),
        "description": row.description,
        "source": row.source,
        "run_id": row.run_id,
        "tags": row.tags,
    }
