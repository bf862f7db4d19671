r"""Untrusted input, parsed one way everywhere: JSON with bounded depth and numbers, and one empty-text policy.

The server's request bodies and ``prodai batch``'s input lines both go through :func:`loads`, so a payload
that one refuses the other refuses too, with the same reason, and no failure of untrusted input can escape as
anything but :class:`UntrustedInputError` (a 4xx in the server, an errors-file line in batch):

- invalid UTF-8 (callers decode; :func:`decode` names the byte) and invalid JSON (line and column);
- nesting deeper than ``max_depth`` (the stdlib parser would recurse until a RecursionError);
- an integer literal longer than ``max_number_digits`` (Python refuses more than 4,300 digits with a
  ValueError, and converting one of fewer still costs quadratic time);
- a lone UTF-16 surrogate (``"\ud800"``): valid JSON, but no UTF-8 text, so a tokenizer or an output
  file would fail on it later, far from the input that caused it.

:func:`is_blank` is the empty-text policy: a text that is empty, or only whitespace and NUL/control
characters, is invalid input (the model would run on nothing).
"""

from __future__ import annotations

import json
import re
from typing import Any

DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_NUMBER_DIGITS = 100
# A \uD800-\uDFFF escape: only then can the parsed document hold a lone surrogate (raw ones are not UTF-8).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Whitespace, NUL and the other C0/C1 controls: none of them is text a model can read.
_BLANK = re.compile(r"[\s\x00-\x1f\x7f-\x9f]*")
# The complement, as a JSON Schema pattern (it matches anywhere): a text needs one such character.
VISIBLE_CHARACTER = r"[^\s\x00-\x1f\x7f-\x9f]"


class UntrustedInputError(ValueError):
    """Untrusted input that cannot be used; the message says why (safe to show to its sender)."""


def decode(data: bytes) -> str:
    """UTF-8 bytes as text.

    Raises:
        UntrustedInputError: Not valid UTF-8 (the message names the byte offset).

    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UntrustedInputError(f"not valid UTF-8 (byte {exc.start})") from None


def loads(text: str, *, max_depth: int = DEFAULT_MAX_DEPTH, max_number_digits: int = DEFAULT_MAX_NUMBER_DIGITS) -> Any:
    """Parse untrusted JSON text within the limits.

    Args:
        text: The document.
        max_depth: Most nested arrays/objects.
        max_number_digits: Most digits in an integer literal.

    Returns:
        The parsed value.

    Raises:
        UntrustedInputError: Invalid JSON, too deep, a number too long, or a lone surrogate.

    """

    def parse_int(literal: str) -> int:
        if len(literal.lstrip("-")) > max_number_digits:
            raise UntrustedInputError(f"a number has more than {max_number_digits} digits")
        return int(literal)

    try:
        value = json.loads(text, parse_int=parse_int)
    except UntrustedInputError:
        raise
    except json.JSONDecodeError as exc:
        raise UntrustedInputError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise UntrustedInputError(f"nested too deeply (more than {max_depth} levels)") from None
    except ValueError as exc:  # a float or int the stdlib itself refuses
        raise UntrustedInputError(f"invalid number: {exc}") from None
    check_value(value, max_depth=max_depth, surrogates=_SURROGATE_ESCAPE.search(text) is not None)
    return value


def check_value(value: Any, *, max_depth: int, surrogates: bool = True) -> None:
    """Refuse a parsed value nested deeper than ``max_depth`` or (with ``surrogates``) holding a lone surrogate.

    Raises:
        UntrustedInputError: Too deep, or a string (or key) that is not valid Unicode text.

    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                raise UntrustedInputError(f"nested too deeply (more than {max_depth} levels)")
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if surrogates and isinstance(key, str):
                    _check_text(key)
                stack.append((child, depth + 1))
        elif surrogates and isinstance(item, str):
            _check_text(item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UntrustedInputError(
            f"a string holds a lone UTF-16 surrogate (\\u{ord(text[exc.start]):04x}), which is not text"
        ) from None


def is_blank(text: str) -> bool:
    """The empty-text policy: empty, or only whitespace and NUL/control characters."""
    return _BLANK.fullmatch(text) is not None
