"""Validation of the protection sections of prodai.yaml: errors name the key and the line."""

from __future__ import annotations

import pytest

from prodai_cli.config import ProdaiConfig, parse_config_text
from prodai_cli.errors import ConfigError

HASH = "a" * 64


def test_defaults_are_safe() -> None:
    config = ProdaiConfig()
    assert config.auth.enabled and config.rate_limit.enabled and config.cache.enabled
    assert config.cache.backend == config.rate_limit.backend == "memory"
    assert config.filters.redact == ["ssn", "card", "email"] and config.filters.normalize_input
    assert config.rate_limit.trusted_proxies == []


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            f"auth:\n  keys:\n    - name: a\n      hash: {'A' * 64}\n",
            r"auth\.keys\.0\.hash: .*64 lowercase hex.*line 4",
        ),
        ("auth:\n  keys:\n    - name: a\n      hash: pk_plaintext\n", r"auth\.keys\.0\.hash: .*never the key itself"),
        (f"auth:\n  keys:\n    - name: 'bad name'\n      hash: {HASH}\n", r"auth\.keys\.0\.name: .*line 3"),
        (
            f"auth:\n  keys:\n    - name: a\n      hash: {HASH}\n      expires: tomorrow\n",
            r"auth\.keys\.0\.expires: .*not an ISO 8601 timestamp",
        ),
        (
            f"auth:\n  keys:\n    - name: a\n      hash: {HASH}\n      created: '2026-01-01T00:00:00'\n",
            r"auth\.keys\.0\.created: .*needs a time zone",
        ),
        (f"auth:\n  keys:\n    - name: a\n      hash: {HASH}\n      scopes: []\n", r"at least one scope"),
        (f"auth:\n  keys:\n    - name: a\n      hash: {HASH}\n      scopes: [root]\n", r"auth\.keys\.0\.scopes\.0"),
        (
            f"auth:\n  keys:\n    - {{name: a, hash: {HASH}}}\n    - {{name: a, hash: {HASH}}}\n",
            "duplicate key names: a",
        ),
        ("auth:\n  header: 'X API Key'\n", r"auth\.header: .*not a valid HTTP header name"),
        ("cache:\n  redis_timeout_s: 0\n", r"cache\.redis_timeout_s: .*greater than 0.*line 2"),
        ("rate_limit:\n  per_key:\n    rate: 0\n", r"rate_limit\.per_key\.rate: .*line 3"),
        ("rate_limit:\n  trusted_proxies: [nope]\n", r"rate_limit\.trusted_proxies: .*'nope' is not an IP"),
        ("cache:\n  backend: redis\nredis_url: memcached://h:1\n", r"redis_url: .*scheme 'memcached'.*line 3"),
        ("redis_url: redis://h:6379/zero\n", r"redis_url: .*database must be a number.*line 1"),
        ("filters:\n  patterns:\n    bad: '('\n", r"filters\.patterns: .*not a valid regular expression"),
    ],
)
def test_invalid_protection_settings_name_key_and_line(yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config_text(yaml_text)


def test_a_valid_key_record_loads() -> None:
    text = (
        f"auth:\n  keys:\n    - name: ci.bot-1\n      hash: {HASH}\n      scopes: [predict, admin, admin]\n"
        "      created: '2026-01-01T00:00:00+00:00'\n      expires: null\n"
    )
    record = parse_config_text(text).auth.keys[0]
    assert record.scopes == ["predict", "admin"] and not record.revoked
