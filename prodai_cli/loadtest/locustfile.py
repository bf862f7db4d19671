"""The Locust user of ``prodai loadtest``: posts texts to ``/predict`` and labels each request by A/B variant.

Only Locust child processes import this module (importing ``locust`` monkey-patches the process with gevent).
It also works as a plain locustfile: ``locust -f prodai_cli/loadtest/locustfile.py --host URL`` runs it with
generated texts, no API key and no user ids; ``prodai loadtest`` configures it through :func:`configure`.
"""

from __future__ import annotations

import json
import random
from typing import Any

from locust import FastHttpUser, task

# Requests are named "<path> [<variant> v<version>]" when the server says which A/B variant and which version
# answered (a fallback or an alias that moved can make them differ from the variant table), so Locust's own
# tables, CSVs and HTML report show one row per variant and version, and prodai's summary reads them back to
# record the evidence on the versions that actually answered.
VARIANT_NAME_FORMAT = "{path} [{variant}]"
VERSION_NAME_FORMAT = "{path} [{variant} v{version}]"

# Generated texts draw from a small vocabulary and vary in length, so a response cache sees mostly new inputs
# (a load test that only measures cache hits would flatter the server).
_WORDS = (
    "the",
    "movie",
    "was",
    "good",
    "bad",
    "great",
    "terrible",
    "not",
    "very",
    "slow",
    "fast",
    "service",
    "product",
    "delivery",
    "support",
    "price",
    "quality",
    "love",
    "hate",
    "recommend",
    "again",
    "never",
    "always",
    "team",
    "app",
    "update",
    "crash",
    "feature",
    "screen",
    "battery",
    "order",
    "refund",
    "friendly",
    "rude",
    "clean",
    "dirty",
    "late",
    "early",
    "happy",
    "sad",
    "worth",
    "money",
    "time",
    "staff",
    "food",
    "room",
)

SETTINGS: dict[str, Any] = {
    "path": "/predict",
    "payloads": None,
    "api_key": None,
    "api_key_header": "X-API-Key",
    "user_ids": 0,
    "user_header": "X-User-ID",
    "timeout_s": 30.0,
}


def configure(settings: dict[str, Any]) -> None:
    """Set what every simulated user sends (called before any user starts, on every Locust process)."""
    SETTINGS.update(settings)
    timeout = float(SETTINGS.get("timeout_s") or 30.0)
    # FastHttpUser reads these class attributes when a user is created.
    ProdaiUser.network_timeout = timeout
    ProdaiUser.connection_timeout = timeout


def generated_text(rng: random.Random) -> str:
    """A random sentence of 4 to 40 words."""
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 40)))


class ProdaiUser(FastHttpUser):  # type: ignore[misc]  # locust is untyped (Any) for mypy
    """One simulated client of a prodai server: back-to-back ``POST /predict`` requests."""

    # Users share no state; each gets its own generator so payload choice does not serialise on one lock.
    def on_start(self) -> None:
        """Seed this user's random source."""
        self.rng = random.Random()

    @task  # type: ignore[untyped-decorator]
    def predict(self) -> None:
        """Post one text and judge the answer."""
        settings = SETTINGS
        path = str(settings["path"])
        payloads = settings.get("payloads")
        text = self.rng.choice(payloads) if payloads else generated_text(self.rng)
        headers: dict[str, str] = {}
        if settings.get("api_key"):
            headers[str(settings["api_key_header"])] = str(settings["api_key"])
        user_ids = int(settings.get("user_ids") or 0)
        if user_ids > 0:
            headers[str(settings["user_header"])] = f"loadtest-user-{self.rng.randrange(user_ids)}"
        with self.client.post(path, json={"text": text}, headers=headers, name=path, catch_response=True) as response:
            body = _json_object(response.content)
            variant = body.get("variant") if body is not None else None
            version = body.get("model_version") if body is not None else None
            if isinstance(variant, str) and variant:
                # Names are bounded by the server's own variant table; a version that is not a plain
                # number (a directory served as "local") names the variant only.
                if isinstance(version, (str, int)) and str(version).isdigit():
                    name = VERSION_NAME_FORMAT.format(path=path, variant=variant, version=version)
                else:
                    name = VARIANT_NAME_FORMAT.format(path=path, variant=variant)
                response.request_meta["name"] = name
            status = response.status_code or 0
            if 200 <= status < 300 and body is None:
                response.failure(f"HTTP {status} without a JSON object body")
            # Anything else: Locust's own rule (status >= 400 or a connection error is a failure).


def _json_object(content: bytes | None) -> dict[str, Any] | None:
    # Bytes straight to json: decoding via .text would guess the charset on every response.
    if not content:
        return None
    try:
        value = json.loads(content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
