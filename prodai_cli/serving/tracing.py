"""W3C Trace Context for the model server: continue an incoming ``traceparent`` (or start a trace).

Every request gets a trace id: the caller's, from a well-formed ``traceparent`` header
(``00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>``, https://www.w3.org/TR/trace-context/), else a
new random one. The server's own span id is new per request. The trace id is put

- in every log line written while the request is handled (a logging filter reads a context variable, so
  lines from any step, not only the access log, carry ``trace_id``), and
- in the response: ``traceparent`` with the trace id, the server's span id and the caller's flags, so a
  client or gateway can link its span to this one; ``tracestate`` is echoed back untouched (bounded).

A malformed header is ignored (a new trace starts), as the recommendation says. Nothing here imports
OpenTelemetry.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
from dataclasses import dataclass

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The spec allows 32 list members of at most 256 characters each; past this the header is dropped, not echoed.
MAX_TRACESTATE_CHARS = 512
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_TRACESTATE = re.compile(r"^[\x20-\x7e]*$")

trace_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("prodai_trace_id", default=None)


@dataclass(frozen=True)
class TraceContext:
    """The request's place in a trace.

    Attributes:
        trace_id: 32 lowercase hex digits (the caller's, or new).
        span_id: This server's span for the request (16 hex digits, new).
        parent_id: The caller's span id, None when the trace started here.
        flags: The trace flags (``01``: sampled).
        tracestate: The caller's ``tracestate``, when well formed and short.

    """

    trace_id: str
    span_id: str
    parent_id: str | None = None
    flags: str = "01"
    tracestate: str | None = None

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` naming this server's span."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid ``traceparent``, else None.

    Version ``ff`` and all-zero ids are invalid; version ``00`` has nothing after the flags; a later version
    may (its extra fields are ignored, as the spec asks).
    """
    if not value or len(value) > 512:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, parent_id, flags


def trace_from(traceparent: str | None, tracestate: str | None) -> TraceContext:
    """The request's trace: the caller's continued, or a new one."""
    span_id = os.urandom(8).hex()
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return TraceContext(trace_id=os.urandom(16).hex(), span_id=span_id)
    trace_id, parent_id, flags = parsed
    state = (
        tracestate if tracestate and len(tracestate) <= MAX_TRACESTATE_CHARS and _TRACESTATE.match(tracestate) else None
    )
    return TraceContext(trace_id=trace_id, span_id=span_id, parent_id=parent_id, flags=flags, tracestate=state)


class TraceFilter(logging.Filter):
    """Adds ``trace_id`` to every record logged while a request is handled.

    A handler filter runs in the thread that logs, before the record is queued for the writer thread: the
    context variable is still the request's there.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the record; never drops one."""
        trace_id = trace_id_var.get()
        if trace_id is not None and not hasattr(record, "trace_id"):
            record.trace_id = trace_id
        return True
