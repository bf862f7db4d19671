"""The ab: section of prodai.yaml: what it accepts, and the key and line of what it refuses."""

from __future__ import annotations

import pytest

from prodai_cli.config import ABConfig, BreakerConfig, parse_config_text
from prodai_cli.errors import ConfigError


def _ab(body: str) -> ABConfig:
    return parse_config_text("ab:\n" + body).ab


def _error(body: str) -> str:
    with pytest.raises(ConfigError) as info:
        _ab(body)
    assert info.value.exit_code == 2
    return info.value.message


@pytest.mark.parametrize(
    ("written", "stored"), [("1", 1), ("'2'", 2), ("v3", 3), ("V4", 4), ("production", "production")]
)
def test_variant_version_is_a_number_or_an_alias(written: str, stored: int | str) -> None:
    ab = _ab(f"  enabled: true\n  model: clf\n  variants:\n    x: {{version: {written}, weight: 1}}\n")
    assert ab.variants["x"].version == stored


@pytest.mark.parametrize("written", ["0", "-1", "1.5", "true", "'v1.2'", "'has space'", "null"])
def test_bad_variant_versions_are_refused_with_key_and_line(written: str) -> None:
    message = _error(f"  model: clf\n  variants:\n    x:\n      version: {written}\n      weight: 1\n")
    assert "ab.variants.x.version" in message
    assert "line 5" in message


def test_weights_must_sum_to_one_error_names_key_and_line() -> None:
    message = _error("  model: clf\n  variants:\n    a: {version: 1, weight: 0.6}\n    b: {version: 2, weight: 0.5}\n")
    assert "ab.variants: Value error, weights must sum to 1, got 1.1" in message
    assert "line 3" in message


def test_weights_within_tolerance_are_accepted() -> None:
    ab = _ab(
        "  model: clf\n  variants:\n    a: {version: 1, weight: 0.333}\n"
        "    b: {version: 2, weight: 0.333}\n    c: {version: 3, weight: 0.333}\n"
    )
    assert len(ab.variants) == 3


def test_weight_range() -> None:
    assert "ab.variants.a.weight" in _error("  variants:\n    a: {version: 1, weight: 1.5}\n")
    assert "ab.variants.a.weight" in _error("  variants:\n    a: {version: 1, weight: -0.1}\n")


def test_variant_names_must_be_label_safe() -> None:
    assert "variant name 'a b'" in _error("  variants:\n    'a b': {version: 1, weight: 1}\n")


def test_enabled_needs_model_and_variants() -> None:
    assert "at least one variant" in _error("  enabled: true\n  model: clf\n")
    assert "needs ab.model" in _error("  enabled: true\n  variants:\n    a: {version: 1, weight: 1}\n")
    # Disabled with nothing configured is the default and fine.
    assert _ab("  enabled: false\n").variants == {}


def test_fallback_and_cascade_must_name_variants() -> None:
    base = "  model: clf\n  variants:\n    a: {version: 1, weight: 0.5}\n    b: {version: 2, weight: 0.5}\n"
    assert "fallback 'c' is not a variant (variants: a, b)" in _error(base + "  fallback: c\n")
    assert _ab(base + "  fallback: b\n").fallback == "b"
    assert "cascade.large 'zz' is not a variant" in _error(base + "  cascade: {enabled: true, small: a, large: zz}\n")
    assert "needs cascade.small and cascade.large" in _error(base + "  cascade: {enabled: true, small: a}\n")
    assert "must be different" in _error(base + "  cascade: {enabled: true, small: a, large: a}\n")
    # A disabled cascade is not checked (it can be prepared before its variants exist).
    assert _ab(base + "  cascade: {enabled: false, small: x, large: y}\n").cascade.small == "x"


def test_breaker_min_calls_cannot_exceed_window() -> None:
    assert "min_calls (30) cannot exceed window (20)" in _error("  breaker: {min_calls: 30}\n")
    assert BreakerConfig(window=5, min_calls=5).min_calls == 5
