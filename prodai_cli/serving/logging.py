"""Structured logs of the model server: one JSON object per line on stderr, with the request id.

Nothing a client sends is logged by default: no bodies, no headers (API keys travel in headers), no query
strings; only the request id, method, route, status, duration, model version and variant. Setting
``serving.log_bodies: true`` adds the request texts, for debugging with data you are allowed to log.
uvicorn's own loggers are routed through the same formatter; its access log is replaced by ours (which
carries the request id).
"""

from __future__ import annotations

import json
import logging
import logging.config
import logging.handlers
import queue
import sys
import time
from typing import Any

LOGGER_NAME = "prodai.serving"
ACCESS_LOGGER_NAME = "prodai.serving.access"
# Attributes every LogRecord has; anything else on a record was passed in ``extra=`` and is logged as a field.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime", "color_message"}
)

logger = logging.getLogger(LOGGER_NAME)
access_logger = logging.getLogger(ACCESS_LOGGER_NAME)


class JsonFormatter(logging.Formatter):
    """Format records as one JSON object: ts, level, logger, msg, then the ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object, no newlines inside."""
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                data[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            data["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the same fields as key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        """``HH:MM:SS LEVEL logger: msg key=value ...``."""
        fields = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += f" {fields}"
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


class BackgroundHandler(logging.handlers.QueueHandler):
    """Writes records to stderr from a thread of its own: a request never waits on formatting or the pipe.

    The access log writes a line per request; formatting it as JSON and writing it cost ~0.1 ms on the
    event loop, which at one client is a measurable share of a small model's latency. Here the caller only
    enqueues the record (unformatted: unlike the stock QueueHandler, which formats in the caller); the
    listener thread formats and writes, in order. ``close()`` (dictConfig replacing handlers, or
    ``logging.shutdown`` at exit) drains the queue first, so no line is lost.
    """

    def __init__(self) -> None:
        self.target = logging.StreamHandler(sys.stderr)
        super().__init__(queue.SimpleQueue())
        self.listener = logging.handlers.QueueListener(self.queue, self.target)
        self.listener.start()

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        """Format in the listener thread, with ``fmt``."""
        self.target.setFormatter(fmt)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Enqueue the record as it is (same process: nothing needs pickling)."""
        return record

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        if self.listener._thread is not None:
            self.listener.stop()
        self.target.close()
        super().close()


def log_config(log_format: str = "json", level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the server process, uvicorn's loggers included.

    Passed to uvicorn as ``log_config`` so every worker process configures itself the same way.
    """
    formatter = (
        "prodai_cli.serving.logging.JsonFormatter"
        if log_format == "json"
        else ("prodai_cli.serving.logging.TextFormatter")
    )
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter}},
        # The trace filter stamps trace_id on every line logged while a request is handled (serving/tracing.py).
        "filters": {"trace": {"()": "prodai_cli.serving.tracing.TraceFilter"}},
        "handlers": {
            "stderr": {
                "()": "prodai_cli.serving.logging.BackgroundHandler",
                "formatter": "default",
                "filters": ["trace"],
            }
        },
        "loggers": {
            "prodai": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
            # Replaced by prodai.serving.access, which carries the request id and the model version.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Apply :func:`log_config` to this process."""
    logging.config.dictConfig(log_config(log_format, level))
    # Neither formatter prints file or line: skip the stack walk every record would otherwise pay for
    # (the logging HOWTO's "Optimization" section). Server processes only; this runs nowhere else.
    logging._srcfile = None
