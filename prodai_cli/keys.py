"""API keys: create, list, revoke and delete them; only their sha256 digests are ever stored.

A key is ``pk_`` followed by 43 URL-safe base64 characters (32 random bytes from :mod:`secrets`). It is
shown once, by ``prodai keys create``; what is stored is its sha256 hex digest with a name, scopes and
timestamps, either in ``prodai.yaml`` under ``auth.keys`` or, when ``auth.keys_file`` names one, in that
YAML file (``keys: [...]``). Both are edited the same way: round-trip YAML (comments survive), validated
before writing, replaced atomically under a lock, so two ``keys create`` at once both land.

Revoking keeps the record with ``revoked: true``: the server can then answer "revoked" rather than
"unknown", and the name cannot be reused by accident. Deleting removes the record (refused while the key is
active unless forced).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prodai_cli.config import (
    API_KEY_NAME_PATTERN,
    CONFIG_FILENAME,
    ApiKeyRecord,
    AuthConfig,
    Scope,
    Settings,
    check_yaml,
    edit_config,
    edit_yaml,
    parse_config_text,
    read_bounded,
    resolve_under,
)
from prodai_cli.errors import ConfigError, ProdaiError, UsageError

KEY_PREFIX = "pk_"
KEY_RANDOM_BYTES = 32
# token_urlsafe(32) is 43 characters of [A-Za-z0-9_-]; anything else cannot be one of our keys.
KEY_PATTERN = re.compile(r"pk_[A-Za-z0-9_\-]{43}", re.ASCII)
KeyStatus = Literal["active", "expired", "revoked"]


class KeysFile(BaseModel):
    """The schema of a keys file (``auth.keys_file``)."""

    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKeyRecord] = Field(default_factory=list)


def generate_key() -> str:
    """A new random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def hash_key(key: str) -> str:
    """The sha256 hex digest that is stored instead of ``key``."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def now_utc() -> datetime:
    """The current time, UTC, to the second (what records store)."""
    return datetime.now(UTC).replace(microsecond=0)


def key_status(record: ApiKeyRecord, now: datetime | None = None) -> KeyStatus:
    """Whether ``record`` would be accepted now."""
    if record.revoked:
        return "revoked"
    if record.expires is not None and datetime.fromisoformat(record.expires) <= (now or now_utc()):
        return "expired"
    return "active"


@dataclass(frozen=True)
class KeyInfo:
    """A stored key as ``prodai keys list`` shows it (a short fingerprint, never the full hash)."""

    name: str
    scopes: tuple[str, ...]
    created: str | None
    expires: str | None
    status: KeyStatus
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "scopes": list(self.scopes),
            "created": self.created,
            "expires": self.expires,
            "status": self.status,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def of(cls, record: ApiKeyRecord, now: datetime | None = None) -> KeyInfo:
        """Summarise a record."""
        return cls(
            name=record.name,
            scopes=tuple(record.scopes),
            created=record.created,
            expires=record.expires,
            status=key_status(record, now),
            # 8 hex digits tell keys apart in a listing; they are useless for guessing a key.
            fingerprint=f"sha256:{record.hash[:8]}",
        )


@dataclass(frozen=True)
class CreatedKey:
    """The outcome of :func:`create_key`: the key itself exists only here."""

    key: str
    record: ApiKeyRecord
    stored_in: Path


@dataclass(frozen=True)
class RevokedKey:
    """The outcome of :func:`revoke_key`."""

    record: ApiKeyRecord
    already_revoked: bool
    stored_in: Path


@dataclass(frozen=True)
class KeySnapshot:
    """Every stored key record and the files they were read from (what a server watches for changes)."""

    records: tuple[ApiKeyRecord, ...]
    sources: tuple[Path, ...]


# --------------------------------------------------------------------------------------------- where keys live


def config_file(settings: Settings) -> Path:
    """The prodai.yaml that holds (or would hold) the keys: the loaded one, or ./prodai.yaml to create."""
    return settings.path if settings.path is not None else settings.root / CONFIG_FILENAME


def keys_file(settings: Settings) -> Path | None:
    """The keys file ``auth.keys_file`` names (relative to the config's directory), if any."""
    name = settings.config.auth.keys_file
    return settings.resolve_path(name) if name else None


def read_keys_file(path: Path, *, strict: bool = False) -> list[ApiKeyRecord]:
    """Validate and read a keys file; a missing file holds no keys (unless ``strict``).

    Args:
        path: The keys file.
        strict: A running server re-reading: a missing, empty or comment-only file is an error, not "no keys".

    Raises:
        ConfigError: Unreadable, not YAML, or a record fails validation (the message names the record); with
            ``strict``, missing or empty.

    """
    if not path.exists():
        if strict:
            raise ConfigError(f"Keys file {path} does not exist; refused, the last good keys stay live")
        return []
    import yaml as pyyaml

    text = read_bounded(path, "Keys file")
    check_yaml(text, f"Keys file {path}")
    try:
        data = pyyaml.safe_load(text)
    except pyyaml.YAMLError as exc:
        raise ConfigError(f"Keys file {path} is not valid YAML: {exc}") from None
    if data is None and strict:
        raise ConfigError(f"Keys file {path} is empty (or only comments); refused, the last good keys stay live")
    try:
        return KeysFile.model_validate(data or {}).keys
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"Keys file {path} is invalid: {problems}") from None


def load_key_snapshot(settings: Settings, *, reload: bool = False) -> KeySnapshot:
    """Re-read the keys from disk as the settings describe (see :func:`read_key_snapshot`)."""
    return read_key_snapshot(settings.config.auth, config_path=settings.path, root=settings.root, reload=reload)


def read_key_snapshot(auth: AuthConfig, *, config_path: Path | None, root: Path, reload: bool = False) -> KeySnapshot:
    """Re-read the keys from disk: the config file (re-read too) and the keys file it names.

    Args:
        auth: The ``auth`` section as loaded; used as it is when there is no config file.
        config_path: The config file to re-read (its ``auth`` section wins), or None for embedded defaults.
        root: The config's directory (``auth.keys_file`` is relative to it).
        reload: A running server re-reading: an empty or comment-only file, or a ``keys_file`` that does not
            exist, is refused (the caller keeps its last good keys) instead of meaning "no keys": the rule
            the A/B reload follows for the same file.

    Raises:
        ConfigError: The config or the keys file is invalid (or, with ``reload``, empty or missing).

    """
    sources: list[Path] = []
    if config_path is not None:
        sources.append(config_path)
        text = read_bounded(config_path, "Config file")
        auth = parse_config_text(text, source=config_path.name, env=True, empty_ok=not reload).auth
    if auth.keys_file:
        path = resolve_under(root, auth.keys_file)
        sources.append(path)
        return KeySnapshot(tuple(read_keys_file(path, strict=reload)), tuple(sources))
    return KeySnapshot(tuple(auth.keys), tuple(sources))


def list_keys(settings: Settings, now: datetime | None = None) -> list[KeyInfo]:
    """Every stored key, summarised."""
    return [KeyInfo.of(record, now) for record in load_key_snapshot(settings).records]


# --------------------------------------------------------------------------------------------- editing


def _record_map(record: ApiKeyRecord) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    scopes = CommentedSeq(record.scopes)
    scopes.fa.set_flow_style()
    node = CommentedMap()
    node["name"] = record.name
    node["hash"] = record.hash
    node["scopes"] = scopes
    node["created"] = record.created
    node["expires"] = record.expires
    node["revoked"] = record.revoked
    return node


def _append_record(parent: Any, field: str, record: ApiKeyRecord) -> None:
    """Append ``record`` to ``parent[field]`` (a list), keeping the comments around it where they were.

    ruamel attaches a comment that follows a block to the last scalar inside it: when the list grows,
    that comment ("# next section...") must move to the new last item or it lands in the middle.
    """
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    node = _record_map(record)
    last_key = next(reversed(node))
    current = parent.get(field)
    if not isinstance(current, CommentedSeq) or len(current) == 0:
        # `keys: []  # comment` (flow, empty) becomes a block list; its comment splits in two: the part
        # on the key's line stays there, what followed (blank lines, the next section's comment) moves
        # below the new item.
        seq = CommentedSeq()
        trailing = None
        entry = parent.ca.items.get(field) if isinstance(parent, CommentedMap) else None
        token = entry[2] if entry and len(entry) > 2 else None
        parent[field] = seq
        if entry is not None and token is not None:
            first, _, rest = token.value.partition("\n")
            column = max(token.start_mark.column - 3, 0)
            entry[2] = CommentToken(first + "\n", CommentMark(column), None) if first.strip() else None
            if rest:
                trailing = CommentToken("\n" + rest, CommentMark(0), None)
        seq.append(node)
        if trailing is not None:
            node.ca.items[last_key] = [None, None, trailing, None]
        return
    previous = current[-1]
    current.append(node)
    if isinstance(previous, CommentedMap) and len(previous):
        prev_key = next(reversed(previous))
        entry = previous.ca.items.get(prev_key)
        token = entry[2] if entry and len(entry) > 2 else None
        if token is not None and token.value.startswith("\n"):
            entry[2] = None
            node.ca.items[last_key] = [None, None, token, None]


def _edit_keys_file(path: Path, mutate: Callable[[Any], None]) -> None:
    """Round-trip edit of a keys file: lock, mutate, validate, atomic replace."""

    def validate(text: str) -> None:
        import yaml as pyyaml

        try:
            check_yaml(text, f"Keys file {path}")
            KeysFile.model_validate(pyyaml.safe_load(text) or {})
        except pyyaml.YAMLError as exc:
            raise ConfigError(f"Keys file {path} is not valid YAML: {exc}") from None
        except ValidationError as exc:
            raise ConfigError(f"Keys file {path} would be invalid: {exc.errors()[0]['msg']}") from None

    def new_document() -> Any:
        from ruamel.yaml.comments import CommentedMap

        doc = CommentedMap()
        doc.yaml_set_start_comment("API key hashes for prodai (prodai keys create/list/revoke). No keys here.")
        return doc

    edit_yaml(path, mutate, validate, what=f"Keys file {path}", new_document=new_document)


def _edit_keys(settings: Settings, mutate: Callable[[Any], None]) -> Path:
    """Apply ``mutate(container)`` where the keys live; ``container["keys"]`` is the list. Returns the file."""
    target = keys_file(settings)
    if target is not None:
        _edit_keys_file(target, mutate)
        return target
    path = config_file(settings)

    def in_config(doc: Any) -> None:
        from ruamel.yaml.comments import CommentedMap

        auth = doc.get("auth")
        if auth is None:
            auth = doc["auth"] = CommentedMap()
        if not isinstance(auth, dict):
            raise ConfigError(f"{path.name}: auth must be a mapping")
        mutate(auth)

    edit_config(path, in_config)
    return path


def _records_in(container: Any) -> list[Any]:
    keys = container.get("keys")
    if keys is None:
        return []
    if not isinstance(keys, list):
        raise ConfigError("auth.keys must be a list of key records")
    return list(keys)


def validate_name(name: str) -> str:
    """Check a key name.

    Raises:
        UsageError: Not 1-64 letters, digits, '.', '_' or '-' starting with a letter or digit.

    """
    if not re.fullmatch(API_KEY_NAME_PATTERN, name):
        raise UsageError(
            f"Invalid key name {name!r}",
            hint="Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def create_key(
    settings: Settings,
    name: str,
    scopes: Sequence[Scope] = ("predict",),
    expires_days: float | None = None,
    *,
    now: datetime | None = None,
) -> CreatedKey:
    """Generate a key, store its hash under ``name``, and return the key (the only time it exists).

    Args:
        settings: Where the keys live.
        name: Unique name.
        scopes: ``predict`` and/or ``admin`` (admin implies predict).
        expires_days: Lifetime in days; None never expires.
        now: The creation time (tests).

    Raises:
        UsageError: Bad name, a name already taken, no scopes, or a non-positive lifetime.
        ConfigError: The file holding the keys is invalid.

    """
    validate_name(name)
    if not scopes:
        raise UsageError("A key needs at least one scope", hint="--scope predict or --scope admin")
    if expires_days is not None and expires_days <= 0:
        raise UsageError(f"--expires must be a positive number of days, got {expires_days:g}")
    created = now or now_utc()
    key = generate_key()
    record = ApiKeyRecord(
        name=name,
        hash=hash_key(key),
        scopes=list(dict.fromkeys(scopes)),
        created=created.isoformat(),
        expires=(created + timedelta(days=expires_days)).isoformat() if expires_days is not None else None,
    )

    def add(container: Any) -> None:
        # Checked under the file lock, so two concurrent creates cannot both take the name.
        if any(isinstance(r, dict) and r.get("name") == name for r in _records_in(container)):
            raise UsageError(f"A key named {name!r} already exists", hint="Pick another name, or revoke it first")
        _append_record(container, "keys", record)

    stored_in = _edit_keys(settings, add)
    return CreatedKey(key=key, record=record, stored_in=stored_in)


def revoke_key(settings: Settings, name: str) -> RevokedKey:
    """Mark the key ``name`` revoked (the record stays so the server can say "revoked").

    Raises:
        ProdaiError: No key has that name.

    """
    found: list[tuple[bool, ApiKeyRecord]] = []

    def revoke(container: Any) -> None:
        for raw in _records_in(container):
            if isinstance(raw, dict) and raw.get("name") == name:
                was_revoked = bool(raw.get("revoked", False))
                raw["revoked"] = True
                plain = {k: list(v) if isinstance(v, list) else v for k, v in raw.items()}
                found.append((was_revoked, ApiKeyRecord.model_validate(plain)))
                return
        raise ProdaiError(f"No key named {name!r}", hint="See the names with: prodai keys list")

    stored_in = _edit_keys(settings, revoke)
    already_revoked, record = found[0]
    return RevokedKey(record=record, already_revoked=already_revoked, stored_in=stored_in)


@dataclass(frozen=True)
class DeletedKey:
    """The outcome of :func:`delete_key`."""

    name: str
    was_revoked: bool
    stored_in: Path


def delete_key(settings: Settings, name: str) -> DeletedKey:
    """Remove the record of key ``name``; the server then answers "invalid key" instead of "revoked".

    The comments around the list survive (the same locked, validated round-trip edit as every other).

    Raises:
        ProdaiError: No key has that name.

    """
    found: list[bool] = []

    def delete(container: Any) -> None:
        for raw in _records_in(container):
            if isinstance(raw, dict) and raw.get("name") == name:
                found.append(bool(raw.get("revoked", False)))
                _drop_record(container, name)
                return
        raise ProdaiError(f"No key named {name!r}", hint="See the names with: prodai keys list")

    stored_in = _edit_keys(settings, delete)
    return DeletedKey(name=name, was_revoked=found[0], stored_in=stored_in)


def _drop_record(container: Any, name: str) -> None:
    """Delete the key record ``name`` from ``container["keys"]``, keeping the comments around the list.

    ruamel attaches the comment that follows a block (the next section's heading) to the last scalar in it,
    so removing the last record moves that comment to the new last one, or, when the list empties, back
    onto ``keys: []`` the way ``prodai init`` wrote it (the inverse of what ``keys create`` does).
    """
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    records = container.get("keys")
    if not isinstance(records, list):
        return
    index = next((i for i, raw in enumerate(records) if isinstance(raw, dict) and raw.get("name") == name), None)
    if index is None:
        return
    removed = records[index]
    trailing = None
    if index == len(records) - 1 and isinstance(removed, CommentedMap) and len(removed):
        entry = removed.ca.items.get(next(reversed(removed)))
        trailing = entry[2] if entry and len(entry) > 2 else None
    del records[index]
    if not records and trailing is None and isinstance(container, CommentedMap):
        entry = container.ca.items.get("keys")
        if not (entry and len(entry) > 2 and entry[2] is not None):
            # Nothing to keep on the line: the list was made for the probe key, so it goes with it.
            del container["keys"]
            return
    if trailing is None:
        return
    if records:
        last = records[-1]
        if isinstance(last, CommentedMap) and len(last):
            last_key = next(reversed(last))
            entry = last.ca.items.setdefault(last_key, [None, None, None, None])
            entry[2] = trailing
        return
    empty = CommentedSeq()
    container["keys"] = empty
    entry = container.ca.items.get("keys") if isinstance(container, CommentedMap) else None
    head = entry[2] if entry and len(entry) > 2 else None
    if head is not None:
        # A block list's head comment sits 3 columns left of where it goes after `[]`.
        token = CommentToken(head.value.rstrip("\n") + trailing.value, CommentMark(head.start_mark.column + 3), None)
    else:
        token = trailing
    if isinstance(container, CommentedMap):
        container.ca.items["keys"] = [None, None, token, None]
        empty.ca.comment = [token, None]
