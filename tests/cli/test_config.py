"""prodai.yaml: loading, error messages with key and line, overrides, atomic edits, init/validate/show."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO_ROOT

from prodai_cli.config import (
    edit_config,
    load_settings,
    parse_config_text,
    render_default_config,
)
from prodai_cli.errors import ConfigError


def test_example_file_is_the_generated_default_and_valid() -> None:
    example = (REPO_ROOT / "prodai.yaml.example").read_text(encoding="utf-8")
    assert example == render_default_config(), "regenerate: prodai --config prodai.yaml.example init --force"
    config = parse_config_text(example, "prodai.yaml.example")
    assert config.serving.port == 8000
    # Every section of the schema is present and commented.
    for section in (
        "registry",
        "serving",
        "ab",
        "cache",
        "rate_limit",
        "auth",
        "monitoring",
        "deploy",
        "batch",
        "loadtest",
    ):
        assert f"\n{section}:" in example
    assert example.count("#") > 50


def test_wrong_type_names_key_and_line() -> None:
    text = "registry:\n  tracking_uri: null\nserving:\n  host: 0.0.0.0\n  port: 99999\n"
    with pytest.raises(ConfigError) as err:
        parse_config_text(text)
    assert "serving.port: Input should be less than or equal to 65535 (prodai.yaml line 5)" in str(err.value)


def test_unknown_key_names_key_and_line() -> None:
    text = "serving:\n  port: 8000\n  prot: 9000\n"
    with pytest.raises(ConfigError) as err:
        parse_config_text(text)
    assert "serving.prot: Unknown key" in str(err.value)
    assert "line 3" in str(err.value)


def test_nested_list_item_error_points_at_its_line() -> None:
    text = "auth:\n  keys:\n    - name: a\n      hash: abc\n    - name: b\n      scopes: [write]\n      hash: x\n"
    with pytest.raises(ConfigError) as err:
        parse_config_text(text)
    message = str(err.value)
    assert "auth.keys.1.scopes.0" in message
    assert "line 6" in message


def test_malformed_yaml_gives_line_and_column() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config_text("serving:\n  port: [8000\n  host: x\n")
    assert "not valid YAML" in str(err.value)
    assert "line" in str(err.value)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config_text("- a\n- b\n")


def test_ab_weights_must_sum_to_one() -> None:
    text = "ab:\n  variants:\n    v1: {version: '1', weight: 0.8}\n    v2: {version: '2', weight: 0.3}\n"
    with pytest.raises(ConfigError, match=r"ab.variants: Value error, weights must sum to 1, got 1.1"):
        parse_config_text(text)


def test_lookup_order_option_then_env_then_cwd(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "prodai.yaml").write_text("serving:\n  port: 1111\n")
    other = project / "other.yaml"
    other.write_text("serving:\n  port: 2222\n")
    third = project / "third.yaml"
    third.write_text("serving:\n  port: 3333\n")
    assert load_settings().config.serving.port == 1111
    monkeypatch.setenv("PRODAI_CONFIG", str(other))
    assert load_settings().config.serving.port == 2222
    assert load_settings(third).config.serving.port == 3333
    monkeypatch.setenv("PRODAI_CONFIG", str(project / "missing.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_embedded_defaults_without_a_file(project: Path) -> None:
    settings = load_settings()
    assert settings.path is None
    assert settings.tracking_uri == f"sqlite:///{(project / '.prodai' / 'mlflow.db').resolve()}"
    assert settings.config.cache.backend == "memory"


def test_environment_overrides(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "prodai.yaml").write_text("serving:\n  port: 1111\n")
    monkeypatch.setenv("PRODAI_SERVING__PORT", "9000")
    monkeypatch.setenv("PRODAI_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("PRODAI_CACHE__ENABLED", "false")
    settings = load_settings()
    assert settings.config.serving.port == 9000
    assert settings.tracking_uri == "http://mlflow.example:5000"
    assert settings.config.cache.enabled is False
    monkeypatch.setenv("PRODAI_SERVING__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"serving\.port"):
        load_settings()


def test_edit_config_keeps_comments_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "prodai.yaml"
    original = "# my comment\nserving:\n  port: 8000  # the port\n"
    path.write_text(original)

    def set_port(doc: dict) -> None:  # type: ignore[type-arg]
        doc["serving"]["port"] = 9000

    edit = edit_config(path, set_port)
    assert edit.written
    text = path.read_text()
    assert "# my comment" in text and "# the port" in text and "port: 9000" in text

    def break_it(doc: dict) -> None:  # type: ignore[type-arg]
        doc["serving"]["port"] = "nope"

    with pytest.raises(ConfigError, match=r"serving\.port"):
        edit_config(path, break_it)
    assert path.read_text() == text  # refused edit leaves the file byte for byte

    def set_1234(doc: dict) -> None:  # type: ignore[type-arg]
        doc["serving"]["port"] = 1234

    dry = edit_config(path, set_1234, dry_run=True)
    assert not dry.written and "1234" in dry.after and path.read_text() == text
    assert not list(tmp_path.glob(".prodai.yaml.*.tmp"))  # no temp files left behind


def test_init_validate_show_through_the_cli(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    first = cli("init")
    assert first.exit_code == 0, first.stderr
    assert (project / "prodai.yaml").read_text() == render_default_config()
    again = cli("init")
    assert again.exit_code == 2
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert cli("init", "--force").exit_code == 0

    valid = cli("config", "validate", "--json")
    assert valid.exit_code == 0 and valid.json() == {"valid": True, "path": str(project / "prodai.yaml")}

    (project / "prodai.yaml").write_text("redis_url: redis://user:s3cret@localhost:6379/0\nserving:\n  port: 8123\n")
    shown = cli("config", "show", "--json")
    assert shown.exit_code == 0
    data = shown.json()
    assert data["serving"]["port"] == 8123
    assert data["redis_url"] == "redis://user:****@localhost:6379/0"
    assert "s3cret" not in shown.stdout

    (project / "prodai.yaml").write_text("serving:\n  port: eighty\n")
    bad = cli("config", "validate")
    assert bad.exit_code == 2
    assert "serving.port: Input should be a valid integer" in bad.stderr and "line 2" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_debug_env_shows_traceback(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    (project / "prodai.yaml").write_text("serving:\n  port: eighty\n")
    result = cli("config", "validate", env={"PRODAI_DEBUG": "1"})
    assert result.exit_code != 0
    assert "Traceback" in result.stderr


def test_the_new_input_limits_refuse_hostile_values_naming_key_and_line() -> None:
    # Each limit is bounded both ways: a huge or zero value would switch the protection off.
    for key, value in [
        ("serving.max_header_bytes", 10**12),
        ("serving.max_headers", 0),
        ("serving.request_read_timeout_s", -1),
        ("serving.max_connections", 0),
        ("serving.max_json_depth", 10**6),
        ("serving.max_json_number_digits", 10**6),
        ("batch.max_line_bytes", 1),
        ("batch.max_json_depth", 1),
        # A deploy that would start a thousand replicas (or none) is a typo, not a plan.
        ("deploy.replicas", 1000),
        ("deploy.replicas", 0),
        ("deploy.balancer_image", "[1, 2]"),
        # A sort window of no chunks, or of a thousand (that many chunks' texts held at once), or a word.
        ("batch.sort_chunks", 0),
        ("batch.sort_chunks", 1000),
        ("batch.sort_chunks", "many"),
        ("serving.trace", "sometimes"),
    ]:
        section, name = key.split(".")
        with pytest.raises(ConfigError) as caught:
            parse_config_text(f"# limits\n{section}:\n  {name}: {value}\n")
        assert f"{key}:" in caught.value.message and "line 3" in caught.value.message, caught.value.message


def test_the_shadow_keys_refuse_hostile_values_naming_key_and_line() -> None:
    # A copy queue without bound (or of nothing), a share outside 0..100%, or a version that cannot exist.
    for name, value in [
        ("max_pending", 0),
        ("max_pending", 10**9),
        ("sample", -0.1),
        ("sample", "150%"),
        ("sample", "lots"),
        ("version", 0),
        ("version", '"../etc"'),
    ]:
        text = f"# shadow\nab:\n  shadow:\n    {name}: {value}\n"
        with pytest.raises(ConfigError) as caught:
            parse_config_text(text)
        assert f"ab.shadow.{name}:" in caught.value.message and "line 4" in caught.value.message, caught.value.message
