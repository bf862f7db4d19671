"""Output redaction and input hygiene for the server.

Output: :class:`OutputFilter` replaces sensitive patterns in every string of a response (labels, generated
text, nested fields) with ``[REDACTED:<name>]``. Built in:

- ``ssn``: US social security numbers written ``123-45-6789`` (the invalid areas 000, 666 and 9xx, group
  00 and serial 0000 are left alone).
- ``card``: payment card numbers of 13-19 digits, written contiguously or in groups of four
  (``4111 1111 1111 1111``, ``4111-1111-...``) or Amex style (``3782 822463 10005``), redacted only when
  the Luhn checksum holds, so order numbers and other random digit runs stay.
- ``email``: ``local@domain.tld`` addresses.

Plus any ``filters.patterns`` (name -> regular expression) from the config.

What is *not* protected: SSNs without dashes or with spaces, card numbers with other groupings or with
non-ASCII digits, emails obfuscated as ``name at domain``, names, addresses, phone numbers, secrets in
other shapes, and anything in a non-string value (numbers, embeddings). Redaction is a last line of
defence for model outputs, not a data-loss-prevention system; it does not touch inputs, logs or the cache
key (the server caches the *filtered* response, so a hit is filtered too).

Input: :func:`normalize_text` makes one text per meaning before a model sees it or a cache key is made:
Unicode NFC (a precomposed "é" and "e" + combining accent become the same), CRLF and lone CR become LF,
and control characters (C0, DEL, C1) except tab and newline are removed, as are lone surrogates (valid in
JSON, not encodable as UTF-8, so they would otherwise fail deep inside a tokenizer). Length limits are the
server's (``serving.max_text_chars``), applied after normalisation.

Call pattern::

    output_filter = OutputFilter(config.filters)                 # once
    text = normalize_text(body.text) if config.filters.normalize_input else body.text
    ...
    response_body = output_filter.redact(prediction_dict)       # before caching and returning

Counters: ``redactions`` (dict name -> count), ``redacted_responses``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prodai_cli.config import FiltersConfig

# Lookbehinds make each pattern start only at the beginning of a run, so a long run of letters or digits
# is scanned once, not once per position (no quadratic time on hostile input).
SSN_PATTERN = r"(?<![0-9-])(?!000|666|9[0-9]{2})[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![0-9-])"
CARD_PATTERN = (
    r"(?<![0-9])(?:"
    r"[0-9]{13,19}"
    r"|[0-9]{4}(?P<sep>[ -])[0-9]{4}(?P=sep)[0-9]{4}(?P=sep)[0-9]{4}"
    r"|[0-9]{4}(?P<sep2>[ -])[0-9]{6}(?P=sep2)[0-9]{4,5}"
    r")(?![0-9])"
)
EMAIL_PATTERN = (
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,63}(?![A-Za-z0-9\-])"
)

# Strings known to hold nothing to redact: at most this many, of at most this length (labels, not free text).
_CLEAN_MAX_ENTRIES = 4096
_CLEAN_MAX_CHARS = 128
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def luhn_valid(number: str) -> bool:
    """The Luhn checksum of the digits in ``number`` (separators ignored) holds."""
    digits = [int(c) for c in number if "0" <= c <= "9"]
    if len(digits) < 2:
        return False
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def normalize_text(text: str) -> str:
    """Unicode NFC, LF line ends, no control characters (tab and newline kept), no lone surrogates."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


class OutputFilter:
    """Redacts configured patterns from the strings in a response.

    Args:
        config: The ``filters`` section.

    """

    def __init__(self, config: FiltersConfig) -> None:
        self.replacement = config.replacement
        self.redactions: dict[str, int] = {}
        self.redacted_responses = 0
        self._clean: set[str] = set()
        self._rules: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None]] = []
        builtin = {
            "card": (CARD_PATTERN, luhn_valid),
            "ssn": (SSN_PATTERN, None),
            "email": (EMAIL_PATTERN, None),
        }
        # Cards first: a card number is never mistaken for parts of other patterns.
        for name in ("card", "ssn", "email"):
            if name in config.redact:
                pattern, check = builtin[name]
                self._rules.append((name, re.compile(pattern), check))
        for name, pattern in config.patterns.items():
            self._rules.append((name, re.compile(pattern), None))

    @property
    def active(self) -> bool:
        """False when no pattern is configured (``redact`` passes values through untouched)."""
        return bool(self._rules)

    def redact_text(self, text: str) -> str:
        """``text`` with every configured pattern replaced."""
        if text in self._clean:
            return text
        original = text
        for name, pattern, check in self._rules:
            text = pattern.sub(self._replacer(name, check), text)
        if text == original and len(text) <= _CLEAN_MAX_CHARS and len(self._clean) < _CLEAN_MAX_ENTRIES:
            # Short strings that recur (a classifier's labels) are checked once, not on every response.
            self._clean.add(text)
        return text

    def _replacer(self, name: str, check: Callable[[str], bool] | None) -> Callable[[re.Match[str]], str]:
        replacement = self.replacement.format(name=name)

        def replace(match: re.Match[str]) -> str:
            if check is not None and not check(match.group(0)):
                return match.group(0)
            self.redactions[name] = self.redactions.get(name, 0) + 1
            return replacement

        return replace

    def redact(self, value: Any) -> Any:
        """A copy of ``value`` (JSON-like) with every string redacted; non-strings pass unchanged."""
        if not self._rules:
            return value
        before = sum(self.redactions.values())
        result = self._walk(value)
        if sum(self.redactions.values()) != before:
            self.redacted_responses += 1
        return result

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {k: self._walk(v) for k, v in value.items()}
        if isinstance(value, list):
            # Embeddings are long lists of floats: skip them without a call per element.
            if not any(isinstance(v, (str, dict, list)) for v in value):
                return value
            return [self._walk(v) for v in value]
        return value
