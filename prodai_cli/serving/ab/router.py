"""Sticky A/B routing: a user id hashes to one of 10,000 buckets and buckets map to variants by weight.

The hash is sha256 over the salt and the user id (never Python's ``hash()``, which is salted per process),
so a user lands on the same variant in every worker, after every restart and on every machine. Requests
without a user id are assigned at random by weight.

An :class:`ABRouter` is immutable: a config reload builds a new router and swaps the reference, so a
request always sees one consistent set of variants. The router also decides where a request goes when its
variant fails (:meth:`ABRouter.fallback_order`) and whether a small model's answer should be escalated to a
larger one (:meth:`ABRouter.escalation`).
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from prodai_cli.config import ABConfig

BUCKETS = 10_000
DEFAULT_VARIANT = "default"

# Metric names the server exports for A/B traffic (ab-show reads the first).
REQUESTS_METRIC = "prodai_requests_total"
FALLBACKS_METRIC = "prodai_ab_fallbacks_total"
ESCALATIONS_METRIC = "prodai_cascade_escalations_total"

PermitT = TypeVar("PermitT")


@dataclass(frozen=True)
class Variant:
    """One arm of the split, with its version resolved to a number.

    Attributes:
        name: The variant name from the config (``v1``, ``production``); the ``variant`` metric label.
        version: The registry version number serving it.
        weight: Its share of traffic, normalised so all weights sum to exactly 1.

    """

    name: str
    version: int
    weight: float


@dataclass(frozen=True)
class Cascade:
    """Small-then-large routing: answers of ``small`` below ``threshold`` confidence go to ``large``."""

    small: str
    large: str
    threshold: float


@dataclass(frozen=True)
class Shadow:
    """Shadow traffic: ``sample`` of the answered requests are copied to ``version`` and compared.

    Attributes:
        name: The ``shadow`` metric label (``v3``).
        version: The registry version that runs the copies.
        sample: Share of answered requests copied, 0..1.
        max_pending: Texts the shadow may have in flight before copies are dropped.

    """

    name: str
    version: int
    sample: float
    max_pending: int


def user_bucket(salt: str, user_id: str) -> int:
    """The bucket (0..9999) of a user: sha256(salt, NUL, user id), first 8 bytes big-endian, mod 10,000.

    Identical in every process and on every machine; changing the salt reshuffles every user.
    """
    digest = hashlib.sha256(
        salt.encode("utf-8", "surrogatepass") + b"\x00" + user_id.encode("utf-8", "surrogatepass")
    ).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class ABRouter:
    """Assigns requests to variants; immutable once built.

    Args:
        model: Registered model name every variant is a version of.
        variants: The arms; weights need not be normalised (they are divided by their sum).
        salt: Hash salt.
        user_header: Request header carrying the user id (the server reads it; kept here for one source).
        fallback: Variant name preferred when another fails; None means highest weight first.
        cascade: Optional small-then-large routing.
        shadow: Optional shadow traffic (its version is loaded with the variants').
        rng: Random source for requests without a user id (seed it in tests).

    Raises:
        ValueError: No variants, duplicate names, negative weights, all weights zero, or ``fallback`` /
            ``cascade`` naming an unknown variant.

    """

    def __init__(
        self,
        model: str,
        variants: Sequence[Variant],
        *,
        salt: str = "prodai",
        user_header: str = "X-User-ID",
        fallback: str | None = None,
        cascade: Cascade | None = None,
        shadow: Shadow | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not variants:
            raise ValueError("an A/B router needs at least one variant")
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate variant names: {names}")
        if any(v.weight < 0 for v in variants):
            raise ValueError("variant weights cannot be negative")
        total = sum(v.weight for v in variants)
        if total <= 0:
            raise ValueError("at least one variant needs a positive weight")
        # A stable order independent of the file's key order: reordering prodai.yaml moves nobody.
        ordered = sorted(variants, key=lambda v: v.name)
        self.model = model
        self.variants: tuple[Variant, ...] = tuple(
            Variant(name=v.name, version=v.version, weight=v.weight / total) for v in ordered
        )
        self.salt = salt
        self.user_header = user_header
        self._by_name = {v.name: v for v in self.variants}
        referenced = {"fallback": fallback}
        if cascade is not None:
            referenced |= {"cascade.small": cascade.small, "cascade.large": cascade.large}
        for role, name in referenced.items():
            if name is not None and name not in self._by_name:
                raise ValueError(f"{role} {name!r} is not a variant ({', '.join(self._by_name)})")
        self.fallback = fallback
        self.cascade = cascade
        self.shadow = shadow
        self._rng = rng if rng is not None else random.Random()
        # Upper bucket bound (exclusive) of each variant; a zero-weight variant owns an empty range.
        bounds: list[int] = []
        cumulative = 0.0
        for variant in self.variants:
            cumulative += variant.weight
            bounds.append(min(BUCKETS, round(cumulative * BUCKETS)))
        bounds[-1] = BUCKETS
        self._bounds = tuple(bounds)

    # ------------------------------------------------------------------------------------ building
    @classmethod
    def from_config(
        cls,
        ab: ABConfig,
        *,
        resolve_alias: Callable[[str], int] | None = None,
        rng: random.Random | None = None,
    ) -> ABRouter:
        """Build the router of an enabled ``ab:`` section.

        Args:
            ab: The validated section (``enabled`` with a model and variants).
            resolve_alias: Maps an alias to its version number; needed only when a variant names an alias
                (``prodai ab-set`` always writes numbers). The server passes
                ``lambda alias: Registry(settings).get_version(f"{model}@{alias}").version``.
            rng: Random source for requests without a user id.

        Raises:
            ValueError: The section has no model or variants, or names an alias and no resolver was given.

        """
        if not ab.model or not ab.variants:
            raise ValueError("ab needs a model and at least one variant")
        variants = []
        for name, spec in ab.variants.items():
            if isinstance(spec.version, int):
                version = spec.version
            elif resolve_alias is None:
                raise ValueError(f"variant {name!r} names alias {spec.version!r} and no alias resolver was given")
            else:
                version = resolve_alias(spec.version)
            variants.append(Variant(name=name, version=version, weight=spec.weight))
        cascade = None
        if ab.cascade.enabled and ab.cascade.small and ab.cascade.large:
            cascade = Cascade(small=ab.cascade.small, large=ab.cascade.large, threshold=ab.cascade.threshold)
        shadow = None
        copies = ab.shadow
        if copies.enabled and copies.version is not None and copies.sample > 0:
            if isinstance(copies.version, int):
                shadow_version = copies.version
            elif resolve_alias is None:
                raise ValueError(f"shadow names alias {copies.version!r} and no alias resolver was given")
            else:
                shadow_version = resolve_alias(copies.version)
            shadow = Shadow(f"v{shadow_version}", shadow_version, copies.sample, copies.max_pending)
        return cls(
            ab.model,
            variants,
            salt=ab.salt,
            user_header=ab.user_header,
            fallback=ab.fallback,
            cascade=cascade,
            shadow=shadow,
            rng=rng,
        )

    @classmethod
    def single(
        cls, model: str, version: int, *, name: str = DEFAULT_VARIANT, user_header: str = "X-User-ID"
    ) -> ABRouter:
        """A one-variant router for a server with A/B off (every request goes to ``version``)."""
        return cls(model, [Variant(name=name, version=version, weight=1.0)], user_header=user_header)

    # ------------------------------------------------------------------------------------ queries
    @property
    def versions(self) -> frozenset[int]:
        """Every version a server must load and warm before this router may take traffic (the shadow's too)."""
        versions = {v.version for v in self.variants}
        if self.shadow is not None:
            versions.add(self.shadow.version)
        return frozenset(versions)

    def variant(self, name: str) -> Variant:
        """The variant called ``name`` (KeyError when unknown)."""
        return self._by_name[name]

    def bucket(self, user_id: str) -> int:
        """The user's bucket under this router's salt."""
        return user_bucket(self.salt, user_id)

    def variant_for_bucket(self, bucket: int) -> Variant:
        """The variant owning ``bucket`` (0..9999)."""
        if not 0 <= bucket < BUCKETS:
            raise ValueError(f"bucket {bucket} outside 0..{BUCKETS - 1}")
        return self.variants[bisect.bisect_right(self._bounds, bucket)]

    def choose(self, user_id: str | None) -> Variant:
        """The variant serving this request: sticky for a user id, random by weight without one.

        An empty user id counts as none.
        """
        if user_id:
            return self.variant_for_bucket(self.bucket(user_id))
        return self.variant_for_bucket(self._rng.randrange(BUCKETS))

    def fallback_order(self, failed: Variant) -> tuple[Variant, ...]:
        """Where a request goes when ``failed`` cannot serve it, best first.

        The configured ``ab.fallback`` first, then every other variant by weight (highest first, ties by
        name). Variants on the failed variant's version are left out: they share its model and its breaker.
        """
        candidates = [v for v in self.variants if v.version != failed.version]
        candidates.sort(key=lambda v: (v.name != self.fallback, -v.weight, v.name))
        return tuple(candidates)

    def fallback_for(self, failed: Variant, acquire: Callable[[int], PermitT | None]) -> tuple[Variant, PermitT] | None:
        """The first fallback whose breaker admits the request, with the permit it granted.

        Args:
            failed: The variant that failed or whose breaker is open.
            acquire: ``Breakers.acquire``: takes a version, returns a permit or None when its breaker is open.

        Returns:
            ``(variant, permit)``, or None when no other version can serve (the server answers 503).

        """
        for candidate in self.fallback_order(failed):
            permit = acquire(candidate.version)
            if permit is not None:
                return candidate, permit
        return None

    def escalation(self, variant: Variant, confidence: float | None) -> Variant | None:
        """The variant to re-ask when the cascade is on and ``variant``'s answer is not confident enough.

        Only answers of the cascade's small variant escalate; an answer without a confidence (embeddings)
        never does.
        """
        cascade = self.cascade
        if cascade is None or confidence is None or variant.name != cascade.small:
            return None
        if confidence >= cascade.threshold:
            return None
        return self._by_name[cascade.large]

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for /health and logs."""
        return {
            "model": self.model,
            "variants": {v.name: {"version": v.version, "weight": v.weight} for v in self.variants},
            "salt_sha256": hashlib.sha256(self.salt.encode("utf-8", "surrogatepass")).hexdigest()[:12],
            "fallback": self.fallback,
            "cascade": None
            if self.cascade is None
            else {"small": self.cascade.small, "large": self.cascade.large, "threshold": self.cascade.threshold},
            "shadow": None
            if self.shadow is None
            else {
                "version": self.shadow.version,
                "sample": self.shadow.sample,
                "max_pending": self.shadow.max_pending,
            },
        }


@dataclass(frozen=True)
class Assignment:
    """The router snapshot a request was routed with, and the variant it was assigned."""

    router: ABRouter
    variant: Variant
