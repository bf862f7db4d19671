"""API key authentication for the server: hashed keys, constant-time comparison, live reload.

:class:`KeyStore` holds the stored key records (sha256 digests only, see :mod:`prodai_cli.keys`) and
answers one question per request, :meth:`KeyStore.verify`: may the presented key do this? The answer
says which of the failure cases applied, so the server can return the right status:

======================  ======  ===============================================================
failure                 status  meaning
======================  ======  ===============================================================
``missing``             401     no header, or an empty one
``malformed``           401     not ASCII, wrong characters or wrong length for a prodai key
``unknown``             401     well formed, but no stored digest matches
``revoked``             401     matches a key that ``prodai keys revoke`` revoked
``expired``             401     matches a key past its ``expires`` time
``insufficient_scope``  403     a valid key without the scope the route needs
======================  ======  ===============================================================

The presented key is hashed and compared against every stored digest with :func:`hmac.compare_digest`
(no early exit), so timing reveals nothing about which digest came close. Nothing here logs, and no
result, message or exception carries the presented key.

Key changes are picked up without a restart: :meth:`KeyStore.verify` stats the config file and the keys
file at most once per ``reload_interval_s`` and re-reads them when their inode, size or mtime changed.
An invalid file is refused (counted in ``reload_errors``, described in ``last_reload_error``) and the
last good keys stay live.

Call pattern (sync, microseconds; fine on the event loop)::

    keys = KeyStore.from_files(auth, config_path=path, root=root)   # once, at start-up
    if not auth.enabled: log.warning(auth_disabled_warning(host, port))
    result = keys.verify(request.headers.get(auth.header), "predict")
    if not result.ok: -> JSON {"detail": result.detail}, status result.status, headers result.headers()
    request.state.key_name = result.key_name                     # for the per-key limit and logs
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from prodai_cli.config import file_signature
from prodai_cli.keys import KEY_PATTERN, KeySnapshot, hash_key, read_key_snapshot

logger = logging.getLogger("prodai.serving.auth")

if TYPE_CHECKING:
    from prodai_cli.config import ApiKeyRecord, AuthConfig, Scope
    from prodai_cli.config.files import FileSignature


class AuthFailure(StrEnum):
    """Why a request was refused."""

    MISSING = "missing"
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    EXPIRED = "expired"
    INSUFFICIENT_SCOPE = "insufficient_scope"


_DETAILS = {
    AuthFailure.MISSING: "Missing API key: send it in the {header} header",
    AuthFailure.MALFORMED: "Malformed API key: prodai keys are 'pk_' and 43 URL-safe characters",
    AuthFailure.UNKNOWN: "Invalid API key",
    AuthFailure.REVOKED: "API key revoked",
    AuthFailure.EXPIRED: "API key expired",
    AuthFailure.INSUFFICIENT_SCOPE: "API key lacks the '{scope}' scope",
}


@dataclass(frozen=True)
class AuthResult:
    """The outcome of :meth:`KeyStore.verify`.

    Attributes:
        ok: The request may proceed.
        status: 200, 401 or 403.
        failure: Why not, when not ok.
        key_name: The matched key's name (for the per-key limit and logs); None when none matched.
        scopes: The matched key's scopes.
        detail: A message for the response body; never contains the key.

    """

    ok: bool
    status: int
    failure: AuthFailure | None = None
    key_name: str | None = None
    scopes: tuple[str, ...] = ()
    detail: str = ""
    header: str = field(default="X-API-Key", repr=False)

    def headers(self) -> dict[str, str]:
        """``WWW-Authenticate`` for a 401 (RFC 9110 wants one); nothing otherwise."""
        if self.status == 401:
            return {"WWW-Authenticate": f'ApiKey header="{self.header}"'}
        return {}


def has_scope(scopes: Sequence[str], required: str) -> bool:
    """``admin`` grants everything; any other scope grants only itself."""
    return "admin" in scopes or required in scopes


def classify_presented(presented: str | None) -> AuthFailure | None:
    """MISSING or MALFORMED for a value that cannot be a key; None when it is worth hashing."""
    if presented is None or not presented.strip():
        return AuthFailure.MISSING
    if not presented.isascii() or not KEY_PATTERN.fullmatch(presented.strip()):
        return AuthFailure.MALFORMED
    return None


class KeyStore:
    """The live set of key records, verified against in constant time per record.

    Args:
        load: Reads the current records and the files they came from.
        reload_interval_s: Stat the source files at most this often (0: on every verify).
        clock: Monotonic clock for the interval.
        now: The wall-clock time expiries are compared with.
        header: The header name, for messages.
        reload: Reads the keys again when a source changed (default: ``load``); stricter than the first
            load (see :func:`~prodai_cli.keys.read_key_snapshot`).

    Raises:
        ConfigError: The first load fails (a server must not start on unreadable keys).

    """

    def __init__(
        self,
        load: Callable[[], KeySnapshot],
        *,
        reload: Callable[[], KeySnapshot] | None = None,
        reload_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        header: str = "X-API-Key",
    ) -> None:
        self._load = load
        self._reload = reload or load
        self.reload_interval_s = reload_interval_s
        self._clock = clock
        self._now = now
        self.header = header
        self.reloads = 0
        self.reload_errors = 0
        self.last_reload_error: str | None = None
        self._records: tuple[ApiKeyRecord, ...] = ()
        self._expiry: tuple[datetime | None, ...] = ()
        self._sources: tuple[Path, ...] = ()
        self._signature: tuple[FileSignature | None, ...] = ()
        self._next_check = 0.0
        self._install(load(), None)

    @classmethod
    def from_files(
        cls,
        auth: AuthConfig,
        *,
        config_path: Path | None,
        root: Path,
        reload_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> KeyStore:
        """The keys ``auth`` points at, re-read from the same files when they change.

        Args:
            auth: The ``auth`` section as loaded (the header name; the keys when there is no config file).
            config_path: The config file the keys (or ``auth.keys_file``) are read from; None: ``auth.keys``.
            root: The config's directory (``auth.keys_file`` is relative to it).
            reload_interval_s: Stat the source files at most this often (0: on every verify).
            clock: Monotonic clock for the interval.
            now: The wall-clock time expiries are compared with.

        """
        return cls(
            lambda: read_key_snapshot(auth, config_path=config_path, root=root),
            reload=lambda: read_key_snapshot(auth, config_path=config_path, root=root, reload=True),
            reload_interval_s=reload_interval_s,
            clock=clock,
            now=now,
            header=auth.header,
        )

    def __len__(self) -> int:
        return len(self._records)

    def active_count(self) -> int:
        """Loaded keys that are neither revoked nor expired."""
        now = self._now()
        return sum(
            1
            for record, expires in zip(self._records, self._expiry, strict=True)
            if not record.revoked and (expires is None or expires > now)
        )

    @property
    def names(self) -> list[str]:
        """Names of the loaded records (for diagnostics)."""
        return [r.name for r in self._records]

    @staticmethod
    def _signature_of(sources: Sequence[Path]) -> tuple[FileSignature | None, ...]:
        return tuple(file_signature(p) for p in sources)

    def _install(self, snapshot: KeySnapshot, signature: tuple[FileSignature | None, ...] | None) -> None:
        # The signature is taken *before* the read when possible: a write racing the read then shows up as
        # a change on the next check instead of being marked as seen.
        self._records = snapshot.records
        self._expiry = tuple(datetime.fromisoformat(r.expires) if r.expires else None for r in snapshot.records)
        if signature is None or snapshot.sources != self._sources:
            signature = self._signature_of(snapshot.sources)
        self._sources = snapshot.sources
        self._signature = signature

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Re-read the keys when a source file changed (or ``force``); True when new keys were installed.

        A failed read keeps the current keys and is counted in ``reload_errors``.
        """
        now = self._clock()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self.reload_interval_s
        signature = self._signature_of(self._sources)
        if not force and signature == self._signature:
            return False
        try:
            snapshot = self._reload()
        except Exception as exc:  # an invalid file must not take the server down: keep the last good keys
            self.reload_errors += 1
            self.last_reload_error = f"{type(exc).__name__}: {exc}"
            logger.error("keys reload refused; the last good keys stay live", extra={"error": str(exc)})
            # Remember the bad file's signature so it is not re-parsed on every request until it changes.
            self._signature = signature
            return False
        self._install(snapshot, signature)
        self.reloads += 1
        self.last_reload_error = None
        return True

    def verify(self, presented: str | None, required_scope: Scope = "predict") -> AuthResult:
        """Check a presented key for a route that needs ``required_scope``.

        Args:
            presented: The header value as received (None when absent).
            required_scope: ``predict`` or ``admin``.

        Returns:
            ok with the key's name, or the failure with its status (401 or 403) and a safe message.

        """
        self.reload_if_changed()
        failure = classify_presented(presented)
        if failure is not None:
            return self._refuse(failure, required_scope)
        assert presented is not None
        digest = hash_key(presented.strip())
        match: int | None = None
        for index, record in enumerate(self._records):
            # No early exit: every record costs the same whether or not it matches.
            if hmac.compare_digest(digest, record.hash) and match is None:
                match = index
        if match is None:
            return self._refuse(AuthFailure.UNKNOWN, required_scope)
        record = self._records[match]
        expires = self._expiry[match]
        if record.revoked:
            return self._refuse(AuthFailure.REVOKED, required_scope, record)
        if expires is not None and expires <= self._now():
            return self._refuse(AuthFailure.EXPIRED, required_scope, record)
        if not has_scope(record.scopes, required_scope):
            return self._refuse(AuthFailure.INSUFFICIENT_SCOPE, required_scope, record, status=403)
        return AuthResult(True, 200, key_name=record.name, scopes=tuple(record.scopes), header=self.header)

    def _refuse(
        self, failure: AuthFailure, scope: str, record: ApiKeyRecord | None = None, *, status: int = 401
    ) -> AuthResult:
        return AuthResult(
            False,
            status,
            failure,
            key_name=record.name if record is not None else None,
            scopes=tuple(record.scopes) if record is not None else (),
            detail=_DETAILS[failure].format(header=self.header, scope=scope),
            header=self.header,
        )


def startup_warnings(enabled: bool, store: KeyStore | None, host: str, port: int | None = None) -> list[str]:
    """What a server should log at WARNING when it starts: auth off, or on with no usable key.

    Args:
        enabled: ``auth.enabled``.
        store: The KeyStore (None when auth is off).
        host: Bound address.
        port: Bound port.

    """
    if not enabled:
        return [auth_disabled_warning(host, port)]
    if store is None or store.active_count() == 0:
        return [
            "auth.enabled is true but no active API key is configured: every request will get 401. "
            "Create one with `prodai keys create --name NAME` (picked up without a restart)."
        ]
    return []


def auth_disabled_warning(host: str, port: int | None = None) -> str:
    """The warning a server must log (at WARNING, at start-up) when ``auth.enabled`` is false."""
    where = f"{host}:{port}" if port is not None else host
    loopback = host in ("127.0.0.1", "localhost", "::1")
    reach = "any process on this machine" if loopback else "ANYONE WHO CAN REACH THIS ADDRESS"
    return (
        f"AUTHENTICATION IS DISABLED (auth.enabled: false): {reach} can call the model at {where} without an "
        "API key, and per-key rate limits do not apply. Use this for local development only; set "
        "auth.enabled: true and create keys with `prodai keys create --name NAME`."
    )
