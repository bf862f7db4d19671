"""What a checklist item reports, and the verdict over all of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "fail", "warn", "skip"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "warn", "skip")


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one checklist item.

    Attributes:
        item: The item's name (``rate_limit``).
        status: ``pass``; ``warn`` (holds, with a caveat); ``fail``; or ``skip`` (could not be checked here:
            the evidence says why). A required item passes on ``pass`` or ``warn`` only.
        evidence: What was observed (statuses, headers, tags), so a reader can trust the verdict.
        fix_hint: How to make it pass; empty when it passes.
        required: Whether the item gates the verdict (``check.required``).
        seconds: Time the item took.

    """

    item: str
    status: Status
    evidence: str
    fix_hint: str = ""
    required: bool = True
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Pass or warn: the property holds."""
        return self.status in ("pass", "warn")

    @property
    def blocking(self) -> bool:
        """A required item that did not hold (failed, or could not be checked)."""
        return self.required and not self.ok

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "item": self.item,
            "status": self.status,
            "required": self.required,
            "evidence": self.evidence,
            "fix_hint": self.fix_hint,
            "seconds": round(self.seconds, 3),
        }


def passed(item: str, evidence: str) -> CheckResult:
    """A passing result."""
    return CheckResult(item, "pass", evidence)


def failed(item: str, evidence: str, fix_hint: str) -> CheckResult:
    """A failing result with how to fix it."""
    return CheckResult(item, "fail", evidence, fix_hint)


def warned(item: str, evidence: str, fix_hint: str) -> CheckResult:
    """The property holds, with a caveat worth fixing."""
    return CheckResult(item, "warn", evidence, fix_hint)


def skipped(item: str, evidence: str, fix_hint: str) -> CheckResult:
    """The item could not be checked here (a required skip fails the verdict)."""
    return CheckResult(item, "skip", evidence, fix_hint)


@dataclass
class CheckReport:
    """Every result of one ``prodai check`` run against one server.

    Attributes:
        url: The server checked.
        results: One result per item, in run order.
        served: The versions the server said it serves (``NAME/VERSION``).

    """

    url: str
    results: list[CheckResult] = field(default_factory=list)
    served: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No required item failed or was skipped."""
        return not self.blocking

    @property
    def blocking(self) -> list[CheckResult]:
        """The required items that did not hold."""
        return [r for r in self.results if r.blocking]

    def counts(self) -> dict[str, int]:
        """How many items ended in each status."""
        return {status: sum(1 for r in self.results if r.status == status) for status in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``prodai check --json`` prints and ship records)."""
        return {
            "url": self.url,
            "passed": self.passed,
            "served": self.served,
            "counts": self.counts(),
            "blocking": [r.item for r in self.blocking],
            "results": [r.to_dict() for r in self.results],
        }
