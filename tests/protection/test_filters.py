"""Output redaction (SSN, Luhn-checked cards, emails, custom patterns) and input normalisation."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from prodai_cli.config import FiltersConfig, parse_config_text
from prodai_cli.errors import ConfigError
from prodai_cli.serving.protection.filters import OutputFilter, luhn_valid, normalize_text

VALID_CARDS = [
    "4111111111111111",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "378282246310005",
    "3782 822463 10005",
    "5555555555554444",
    "6011111111111117",
]


def default_filter() -> OutputFilter:
    return OutputFilter(FiltersConfig())


def test_luhn() -> None:
    for card in VALID_CARDS:
        assert luhn_valid(card), card
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("1234567890123456")
    assert not luhn_valid("7")


@pytest.mark.parametrize("card", VALID_CARDS)
def test_valid_card_numbers_are_redacted(card: str) -> None:
    out = default_filter().redact_text(f"charge {card} today")
    assert out == "charge [REDACTED:card] today"


@pytest.mark.parametrize(
    "text",
    [
        "order 4111111111111112 shipped",  # fails Luhn
        "tracking 1234567890123456",  # fails Luhn
        "id 41111111111111110000",  # 20 digits: longer than any card
        "call 4111 1111 1111 111",  # incomplete grouping
        "v 4111-1111 1111-1111",  # mixed separators
        "pi is 3.14159265358979",
    ],
)
def test_digit_runs_that_are_not_cards_stay(text: str) -> None:
    assert default_filter().redact_text(text) == text


def test_ssn_email_and_mixed_text() -> None:
    f = default_filter()
    text = "SSN 123-45-6789, mail jane.doe+x@example.co.uk, card 4111 1111 1111 1111 and 42 more."
    assert f.redact_text(text) == ("SSN [REDACTED:ssn], mail [REDACTED:email], card [REDACTED:card] and 42 more.")
    assert f.redactions == {"ssn": 1, "email": 1, "card": 1}
    # Numbers that cannot be SSNs (area 000/666/9xx, group 00, serial 0000) or are part of longer runs stay.
    for text in ("000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000", "2024-123-45-6789"):
        assert f.redact_text(text) == text
    assert f.redact_text("no@tld and user@host") == "no@tld and user@host"


def test_redact_walks_nested_values_and_leaves_non_strings() -> None:
    f = default_filter()
    response = {
        "label": "contact bob@example.com",
        "confidence": 0.93,
        "details": [{"note": "SSN 123-45-6789"}, 7, None, True],
        "embedding": [0.1, 0.2, 0.3],
    }
    out = f.redact(response)
    assert out == {
        "label": "contact [REDACTED:email]",
        "confidence": 0.93,
        "details": [{"note": "SSN [REDACTED:ssn]"}, 7, None, True],
        "embedding": [0.1, 0.2, 0.3],
    }
    assert response["label"] == "contact bob@example.com"  # the input is not modified
    assert f.redacted_responses == 1
    f.redact({"label": "POSITIVE"})
    assert f.redacted_responses == 1


def test_configured_patterns_and_replacement() -> None:
    config = FiltersConfig(redact=["email"], patterns={"api_token": r"tok_[a-z0-9]{8}"}, replacement="<{name}>")
    f = OutputFilter(config)
    assert f.redact_text("use tok_abcd1234 or a@b.io; SSN 123-45-6789") == "use <api_token> or <email>; SSN 123-45-6789"
    off = OutputFilter(FiltersConfig(redact=[]))
    assert not off.active
    assert off.redact({"t": "a@b.io"}) == {"t": "a@b.io"}


def test_bad_filter_config_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        FiltersConfig(patterns={"x": "("})
    with pytest.raises(ValidationError, match="matches the empty string"):
        FiltersConfig(patterns={"x": "a*"})
    with pytest.raises(ValidationError, match="placeholder"):
        FiltersConfig(replacement="{other}")
    with pytest.raises(ValidationError, match="built in"):
        FiltersConfig(patterns={"email": "x"})
    with pytest.raises(ConfigError, match=r"filters\.redact\.0: .*\(prodai\.yaml line 3\)"):
        parse_config_text("# comment\nfilters:\n  redact: [phone]\n")


def test_redaction_is_linear_on_hostile_input() -> None:
    f = default_filter()
    hostile = ["a" * 100_000, "1" * 100_000, ("1-" * 50_000), ("a." * 50_000) + "@", "4111 " * 20_000]
    started = time.perf_counter()
    for text in hostile:
        f.redact_text(text)
    assert time.perf_counter() - started < 2.0


def test_normalize_text() -> None:
    assert normalize_text("cafe\u0301") == "caf\u00e9"  # NFC
    assert normalize_text("a\tb\nc") == "a\tb\nc"  # tab and newline kept
    assert normalize_text("a\r\nb\rc") == "a\nb\nc"
    assert normalize_text("a\x00b\x07c\x1bd\x7fe\x85f\x9fg") == "abcdefg"  # C0, DEL, C1 removed
    assert normalize_text("x\ud800y") == "xy"  # lone surrogate removed: the result encodes as UTF-8
    normalize_text("x\ud800y").encode("utf-8")
    assert normalize_text("plain text") == "plain text"
    assert normalize_text("emoji \U0001f44d\u200d ok") == "emoji \U0001f44d\u200d ok"  # format chars kept


def test_recurring_strings_are_checked_once_but_sensitive_ones_every_time() -> None:
    f = default_filter()
    label = "POSITIVE"
    assert f.redact({"label": label}) == {"label": label}
    assert label in f._clean  # a clean label is remembered...
    leaky = "mail ops@example.com"
    for _ in range(3):  # ...a string that needed redacting never is: counted and redacted every time
        assert f.redact({"label": leaky}) == {"label": "mail [REDACTED:email]"}
    assert leaky not in f._clean
    assert f.redactions == {"email": 3} and f.redacted_responses == 3
    long_text = "x" * 1000
    assert f.redact_text(long_text) == long_text and long_text not in f._clean  # free text is not remembered
