"""KeyStore: every 401/403 case, live reload of keys from prodai.yaml and from a keys file, and no key in logs."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from prodai_cli.config import load_settings, render_default_config, write_atomic
from prodai_cli.keys import create_key, generate_key, hash_key, revoke_key
from prodai_cli.serving.protection.auth import AuthFailure, KeyStore, auth_disabled_warning, has_scope, startup_warnings


@pytest.fixture
def config_path(project: Path) -> Path:
    path = project / "prodai.yaml"
    write_atomic(path, render_default_config())
    return path


def store_for(config_path: Path, **kwargs: Any) -> KeyStore:
    settings = load_settings(config_path)
    return KeyStore.from_files(
        settings.config.auth, config_path=settings.path, root=settings.root, reload_interval_s=0, **kwargs
    )


def test_every_refusal_has_its_status_and_reason(config_path: Path) -> None:
    settings = load_settings(config_path)
    predict = create_key(settings, "predictor").key
    admin = create_key(settings, "operator", ["admin"]).key
    revoked = create_key(settings, "old").key
    revoke_key(settings, "old")
    expired = create_key(settings, "temp", expires_days=1, now=datetime.now(UTC) - timedelta(days=2)).key
    store = store_for(config_path)

    cases = {
        "missing header": (None, "predict", 401, AuthFailure.MISSING),
        "empty header": ("", "predict", 401, AuthFailure.MISSING),
        "blank header": ("   ", "predict", 401, AuthFailure.MISSING),
        "too short": ("pk_abc", "predict", 401, AuthFailure.MALFORMED),
        "too long": (predict + "x", "predict", 401, AuthFailure.MALFORMED),
        "non-ASCII": ("pk_" + "é" * 43, "predict", 401, AuthFailure.MALFORMED),
        "non-ASCII look-alike": (predict[:-1] + "ı", "predict", 401, AuthFailure.MALFORMED),
        "wrong charset": ("pk_" + "!" * 43, "predict", 401, AuthFailure.MALFORMED),
        "wrong prefix": ("sk_" + predict[3:], "predict", 401, AuthFailure.MALFORMED),
        "control character": (predict[:10] + "\n" + predict[11:], "predict", 401, AuthFailure.MALFORMED),
        "unknown key": (generate_key(), "predict", 401, AuthFailure.UNKNOWN),
        "revoked key": (revoked, "predict", 401, AuthFailure.REVOKED),
        "expired key": (expired, "predict", 401, AuthFailure.EXPIRED),
        "predict key on an admin route": (predict, "admin", 403, AuthFailure.INSUFFICIENT_SCOPE),
    }
    for case, (presented, scope, status, failure) in cases.items():
        result = store.verify(presented, scope)  # type: ignore[arg-type]
        assert (result.ok, result.status, result.failure) == (False, status, failure), case
        assert result.detail and (presented is None or presented.strip() == "" or presented not in result.detail)
        if status == 401:
            assert result.headers() == {"WWW-Authenticate": 'ApiKey header="X-API-Key"'}, case
        else:
            assert result.headers() == {}
    assert store.verify(predict, "admin").key_name == "predictor"  # 403 says who, for the logs

    ok = store.verify(predict, "predict")
    assert (ok.ok, ok.status, ok.failure, ok.key_name, ok.scopes) == (True, 200, None, "predictor", ("predict",))
    assert store.verify(admin, "admin").ok
    assert store.verify(admin, "predict").ok  # admin implies predict
    assert store.verify(f"  {predict}  ").ok  # surrounding whitespace is not part of the key


def test_expiry_is_checked_at_request_time(config_path: Path) -> None:
    settings = load_settings(config_path)
    key = create_key(settings, "short-lived", expires_days=1).key
    clock = [datetime.now(UTC)]
    store = store_for(config_path, now=lambda: clock[0])
    assert store.verify(key).ok
    clock[0] += timedelta(days=1, seconds=1)
    assert store.verify(key).failure is AuthFailure.EXPIRED


def test_scope_rules() -> None:
    assert has_scope(["predict"], "predict") and not has_scope(["predict"], "admin")
    assert has_scope(["admin"], "predict") and has_scope(["admin"], "admin")


def test_keys_are_picked_up_and_revoked_without_a_restart(config_path: Path) -> None:
    settings = load_settings(config_path)
    store = store_for(config_path)
    assert len(store) == 0
    key = create_key(settings, "late").key  # created after the store was built
    assert store.verify(key).ok and store.reloads == 1
    revoke_key(settings, "late")
    assert store.verify(key).failure is AuthFailure.REVOKED
    assert store.reloads == 2


def test_an_invalid_edit_keeps_the_last_good_keys(config_path: Path) -> None:
    settings = load_settings(config_path)
    key = create_key(settings, "steady").key
    store = store_for(config_path)
    good = config_path.read_text()
    config_path.write_text(good.replace('header: "X-API-Key"', "header: [oops"))
    result = store.verify(key)
    assert result.ok  # the server keeps serving with the keys it had
    assert store.reload_errors == 1 and store.last_reload_error is not None
    assert key not in store.last_reload_error
    assert store.verify(key).ok and store.reload_errors == 1  # the bad file is not re-parsed per request
    write_atomic(config_path, good.replace("revoked: false", "revoked: true"))
    assert store.verify(key).failure is AuthFailure.REVOKED
    assert store.last_reload_error is None


def test_reload_checks_are_rate_limited_by_the_interval(config_path: Path) -> None:
    settings = load_settings(config_path)
    ticks = [0.0]
    store = KeyStore.from_files(
        settings.config.auth, config_path=settings.path, root=settings.root, reload_interval_s=5, clock=lambda: ticks[0]
    )
    store.reload_if_changed()
    key = create_key(settings, "later").key
    ticks[0] = 4.0
    assert store.verify(key).failure is AuthFailure.UNKNOWN  # not looked at yet
    ticks[0] = 10.0
    assert store.verify(key).ok


def test_keys_file_is_the_store_when_configured(config_path: Path) -> None:
    text = config_path.read_text().replace("keys_file: null", "keys_file: secrets/keys.yaml")
    write_atomic(config_path, text)
    settings = load_settings(config_path)
    store = store_for(config_path)
    created = create_key(settings, "filed", ["admin"])
    keys_path = config_path.parent / "secrets" / "keys.yaml"
    assert created.stored_in == keys_path
    assert config_path.read_text() == text  # prodai.yaml untouched
    stored = keys_path.read_text()
    assert hash_key(created.key) in stored and created.key not in stored
    assert store.verify(created.key, "admin").ok
    assert os.stat(keys_path).st_mode & 0o077 == 0  # created private


def test_keys_file_and_inline_keys_are_exclusive(config_path: Path) -> None:
    from prodai_cli.errors import ConfigError

    settings = load_settings(config_path)
    create_key(settings, "inline")
    text = config_path.read_text().replace("keys_file: null", "keys_file: keys.yaml")
    config_path.write_text(text)
    with pytest.raises(ConfigError, match=r"set auth\.keys_file or auth\.keys, not both"):
        load_settings(config_path)


def test_no_key_reaches_any_log_record(config_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = load_settings(config_path)
    key = create_key(settings, "quiet").key
    store = store_for(config_path)
    for presented in (key, key + "x", "pk_" + "é" * 43, generate_key()):
        store.verify(presented)
    revoke_key(settings, "quiet")
    store.verify(key)
    assert all(key not in record.getMessage() for record in caplog.records)


def test_auth_disabled_warning_is_loud() -> None:
    local = auth_disabled_warning("127.0.0.1", 8000)
    public = auth_disabled_warning("0.0.0.0", 8000)
    assert local.startswith("AUTHENTICATION IS DISABLED")
    assert "127.0.0.1:8000" in local and "auth.enabled: false" in local
    assert "ANYONE WHO CAN REACH THIS ADDRESS" in public and "ANYONE" not in local


def test_startup_warnings(config_path: Path) -> None:
    settings = load_settings(config_path)
    assert startup_warnings(False, None, "0.0.0.0", 80)[0].startswith("AUTHENTICATION IS DISABLED")
    store = store_for(config_path)
    assert "no active API key" in startup_warnings(True, store, "127.0.0.1", 8000)[0]
    create_key(settings, "gone")
    revoke_key(settings, "gone")
    store.reload_if_changed()
    assert store.active_count() == 0 and len(store) == 1
    create_key(settings, "live")
    store.reload_if_changed()
    assert store.active_count() == 1
    assert startup_warnings(True, store, "127.0.0.1", 8000) == []
