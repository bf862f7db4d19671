"""The one model-reference syntax every prodai command accepts.

``NAME`` (latest version), ``NAME@ALIAS``, ``NAME/VERSION`` and ``models:/NAME@ALIAS`` or
``models:/NAME/VERSION`` (MLflow's own URI form).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prodai_cli.errors import UsageError

# MLflow allows fairly free model names; we forbid only the separators our syntax uses.
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\- ]*"
_REF = re.compile(rf"^(?:models:/)?(?P<name>{_NAME}?)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>[0-9]+))?$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference. At most one of ``alias`` and ``version`` is set."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.alias:
            return f"{self.name}@{self.alias}"
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return self.name

    @property
    def uri(self) -> str:
        """The ``models:/`` URI MLflow understands (latest version when neither alias nor version)."""
        if self.alias:
            return f"models:/{self.name}@{self.alias}"
        if self.version is not None:
            return f"models:/{self.name}/{self.version}"
        return f"models:/{self.name}/latest"


def parse_model_ref(text: str) -> ModelRef:
    """Parse a model reference.

    Args:
        text: ``NAME``, ``NAME@ALIAS``, ``NAME/VERSION``, or either with a ``models:/`` prefix.

    Returns:
        The parsed reference.

    Raises:
        UsageError: If the text is not a model reference.

    """
    match = _REF.match(text.strip())
    if not match or not match.group("name"):
        raise UsageError(
            f"Invalid model reference {text!r}",
            hint="Use NAME, NAME@ALIAS, NAME/VERSION or models:/NAME@ALIAS",
        )
    version = match.group("version")
    return ModelRef(
        name=match.group("name").strip(),
        alias=match.group("alias"),
        version=int(version) if version is not None else None,
    )


def looks_like_model_ref(text: str) -> bool:
    """Return True when ``text`` parses as a model reference (used to tell refs from local paths)."""
    try:
        parse_model_ref(text)
    except UsageError:
        return False
    return True
