"""The one exception tree of prodai and the exit codes it maps to.

Every error a user can cause derives from :class:`ProdaiError`; the CLI catches it in one handler
(``cli.main``) and prints its message without a traceback (set ``PRODAI_DEBUG=1`` to see one).

Tree::

    ProdaiError                exit 1  anything prodai reports on purpose
    ├── UsageError             exit 2  bad arguments or options
    │   ├── ConfigError        exit 2  prodai.yaml missing, malformed or invalid (names key and line)
    │   ├── ResumeRefusedError exit 2  an existing batch output belongs to another input, model or settings
    │   └── MissingExtraError  exit 2  a library an optional part needs is not installed (names the extra)
    ├── RegistryError          exit 1  the model registry refused or failed an operation
    │   ├── ModelNotFoundError exit 1  unknown model, version or alias
    │   ├── InvalidModelError  exit 1  a directory that is not a loadable transformers model
    │   ├── ModelIntegrityError exit 1 cached model files that do not match the hashes recorded for them
    │   └── InUseError         exit 1  a version or alias that an A/B split, the config or a deployment uses
    ├── InputError             exit 1  an input file that cannot be read
    ├── ThresholdError         exit 1  a job finished but crossed a configured threshold
    │   ├── ErrorRateExceededError     a batch job finished with too many bad lines (carries the summary)
    │   └── ExportRejectedError        an exported model differs from its source beyond tolerance (figures)
    ├── DeployError            exit 1  an image build, a container or the Docker engine failed
    ├── ServeError             exit 1  the server could not start, or stopped because its model did not load
    ├── ReloadRejected         exit 1  a new config is valid but cannot be served (a version does not load)
    ├── JobError               exit 1  a batch job over HTTP was refused, failed or cannot be reached
    │   ├── JobNotFoundError   exit 1  no job with that id
    │   └── JobCancelledError  exit 1  the job was cancelled (raised inside the runner to stop it)
    └── ShipFailed             exit 1  a step of ship's gate failed (ship records it in its report)
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class ProdaiError(Exception):
    """Base of every error prodai reports to the user on purpose.

    Attributes:
        exit_code: The process exit status the CLI uses for this error.
        hint: Optional next step shown under the message.

    """

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


def first_line(exc: BaseException) -> str:
    """The first line of a foreign exception's message (its type name when empty), for a one-line error."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class UsageError(ProdaiError):
    """Bad command-line arguments or options."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """prodai.yaml is missing, malformed or fails validation."""


class RegistryError(ProdaiError):
    """The model registry refused or failed an operation."""


class ModelNotFoundError(RegistryError):
    """A model name, version or alias does not exist in the registry."""


class InvalidModelError(RegistryError):
    """A directory is not a loadable transformers model."""


class ModelIntegrityError(RegistryError):
    """A cached version's files do not match the SHA-256 manifest recorded when they were cached."""


class InUseError(RegistryError):
    """A version or alias cannot be deleted: an A/B split, the serving config or a deployment uses it."""


class InputError(ProdaiError):
    """An input file is missing, unreadable or unusable."""


class ThresholdError(ProdaiError):
    """A job completed but crossed a threshold the user set (for example an error rate)."""


class ExportRejectedError(ThresholdError):
    """An exported model (ONNX) differs from its torch source beyond tolerance; nothing was registered.

    Attributes:
        figures: The equivalence figures measured (max abs difference, label agreement, cosines).

    """

    def __init__(self, message: str, *, figures: dict[str, Any], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.figures = figures


class DeployError(ProdaiError):
    """Building an image, starting a container or reaching the Docker engine failed."""


class ResumeRefusedError(UsageError):
    """An existing output belongs to a different input, model version or settings."""


class MissingExtraError(UsageError):
    """A library that an optional part of prodai needs is not installed; the hint names the extra to install.

    Attributes:
        extra: The ``prodai[EXTRA]`` that brings the library (``torch``, ``onnx``, ...).

    """

    def __init__(self, message: str, *, extra: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or f"pip install 'prodai[{extra}]'")
        self.extra = extra


class ErrorRateExceededError(ThresholdError):
    """The job finished, every good line was predicted, but too many lines were bad.

    Attributes:
        summary: The job's :class:`~prodai_cli.batch.engine.BatchSummary` (typed loosely: this module sits
            below the batch package).

    """

    def __init__(self, message: str, summary: Any) -> None:
        super().__init__(message, hint="The good lines were all predicted; fix the input or raise --max-error-rate")
        self.summary = summary


class ServeError(ProdaiError):
    """The server could not start or stopped because its model did not load."""


class ReloadRejected(ProdaiError):
    """The new config is valid YAML and schema but cannot be served (a version does not load)."""


class ShipFailed(ProdaiError):
    """A step of the gate failed (caught by :func:`~prodai_cli.ship.ship`, which records it in the report)."""


class JobError(ProdaiError):
    """A batch job over HTTP was refused, failed, or its server or queue cannot be reached."""


class JobNotFoundError(JobError):
    """No job with that id exists (or it was removed after ``jobs.keep_days``)."""


class JobCancelledError(JobError):
    """The job was cancelled; raised from the runner's progress callback to stop between commits."""
