"""A Redis URL parsed into an address: what ``redis_url`` in prodai.yaml may say.

On the ground floor (standard library only) because the config validator checks the URL at load time and
the Redis client connects with the result; neither should import the other.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS; ``?ssl_ca_certs=FILE`` names the
CA bundle, ``?ssl_cert_reqs=none`` skips certificate checks) and ``unix:///path/to/redis.sock[?db=N]``;
``?db=N`` works on all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisAddress:
    """Where a Redis server is and how to log in, parsed from a URL.

    Attributes:
        host: Host name or address (empty for a Unix socket).
        port: TCP port.
        path: Unix socket path (``unix://`` URLs), else None.
        db: Database number (``SELECT``ed after connecting when not 0).
        username: ACL user name (Redis 6+), or None.
        password: Password (``AUTH``), or None.
        tls: Connect with TLS (``rediss://``).
        verify: Check the server certificate (TLS only).
        ca_certs: File of CA certificates to check it against (TLS only; default: the system's).

    """

    host: str
    port: int = DEFAULT_PORT
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    verify: bool = True
    ca_certs: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """Parse a ``redis://``, ``rediss://`` or ``unix://`` URL.

        Raises:
            ValueError: Another scheme, a port or database that is not a number.

        """
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}: use redis://, rediss:// or unix://")
        db_text = query.get("db") or (parts.path.strip("/") if scheme != "unix" else "") or "0"
        if not db_text.isdigit():
            raise ValueError(f"Redis database must be a number, not {db_text!r}")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"Redis port in {url!r} is not a number") from None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if scheme == "unix":
            if not parts.path:
                raise ValueError("unix:// Redis URL needs a socket path, e.g. unix:///run/redis/redis.sock")
            return cls(host="", path=parts.path, db=int(db_text), username=username, password=password)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            db=int(db_text),
            username=username,
            password=password,
            tls=scheme == "rediss",
            verify=query.get("ssl_cert_reqs", "required").lower() != "none",
            ca_certs=query.get("ssl_ca_certs"),
        )
