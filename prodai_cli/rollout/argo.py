"""The k8s hand-off: a rollout plan as Argo Rollouts manifests (a ``Rollout`` and an ``AnalysisTemplate``).

prodai moves a docker or compose deployment's traffic itself; in a cluster the same plan is the job of Argo
Rollouts, with Prometheus answering what ``/metrics`` answers here. Each ``--steps`` share becomes a
``setWeight`` and a ``pause`` of ``--interval``; each ``--slo`` a Prometheus query over the candidate
variant's ``prodai_*`` series over that interval, with the same definitions as the live window
(:mod:`prodai_cli.rollout.window`):

- ``error_rate``: (5xx answered + fallbacks) / (answered + fallbacks), from ``prodai_requests_total`` and
  ``prodai_ab_fallbacks_total``;
- ``pNN``: ``histogram_quantile`` over ``prodai_variant_latency_seconds``; ``avg``: its sum over its count;
- ``rps``: assigned requests per second; ``agreement``: ``prodai_shadow_agreement_total`` /
  ``prodai_shadow_compared_total``.

Nothing here talks to a cluster; the rendered files are checked by parsing them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.errors import UsageError
from prodai_cli.rollout.window import AGREED, COMPARED, FALLBACKS, LATENCY, REQUESTS
from prodai_cli.slo import Slo, parse_slos

if TYPE_CHECKING:
    from prodai_cli.rollout.engine import RolloutPlan

ROLLOUT_FILE = "rollout.yaml"
ANALYSIS_FILE = "analysis-template.yaml"


def duration(seconds: float) -> str:
    """Seconds as a Prometheus range and an Argo duration (``120s``; whole seconds, at least 1)."""
    return f"{max(1, math.ceil(seconds))}s"


def slo_query(slo: Slo, variant: str, window: str) -> tuple[str, str, str]:
    """(metric name, PromQL query, Argo successCondition) of one live SLO on ``variant``'s series.

    Latency thresholds are given in ms and the histogram is in seconds: the condition is in seconds.

    Raises:
        UsageError: An SLO Prometheus cannot answer from these series (min, max).

    """
    sel = f'{{variant="{variant}"}}'
    assigned = f"(sum(increase({REQUESTS}{sel}[{window}])) + (sum(increase({FALLBACKS}{sel}[{window}])) or vector(0)))"
    percent = slo.percentile
    threshold = slo.threshold
    if percent is not None:
        name = f"p{percent:g}-latency".replace(".", "-")
        query = f"histogram_quantile({percent / 100:g}, sum by (le) (rate({LATENCY}_bucket{sel}[{window}])))"
        threshold = slo.threshold / 1000.0
    elif slo.metric == "avg":
        name = "avg-latency"
        query = f"sum(rate({LATENCY}_sum{sel}[{window}])) / sum(rate({LATENCY}_count{sel}[{window}]))"
        threshold = slo.threshold / 1000.0
    elif slo.metric == "error_rate":
        name = "error-rate"
        failed = (
            f'((sum(increase({REQUESTS}{{variant="{variant}",status=~"5.."}}[{window}])) or vector(0)) + '
            f"(sum(increase({FALLBACKS}{sel}[{window}])) or vector(0)))"
        )
        query = f"{failed} / {assigned}"
    elif slo.metric == "rps":
        name = "rps"
        query = f"{assigned} / {window[:-1]}"
    elif slo.metric == "agreement":
        name = "agreement"
        query = f"sum(increase({AGREED}{sel}[{window}])) / sum(increase({COMPARED}{sel}[{window}]))"
    else:
        raise UsageError(f"SLO {slo.text!r} cannot be judged from Prometheus series (min and max need every sample)")
    return name, query, f"result[0] {slo.op} {threshold:g}"


def manifests(plan: RolloutPlan, *, name: str, namespace: str, replicas: int, prometheus: str) -> dict[str, str]:
    """The Rollout and the AnalysisTemplate of ``plan`` for the k8s deployment ``name``, by file name."""
    from prodai_cli.deploy.templates import render

    window = duration(plan.interval_s)
    metrics = []
    for slo in parse_slos(plan.slos, live=True):
        metric, query, condition = slo_query(slo, plan.candidate.name, window)
        metrics.append({"slo": slo.text, "name": metric, "query": query, "condition": condition})
    template_name = f"{name}-slos"
    common: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "template_name": template_name,
        "candidate_ref": f"{plan.model}/{plan.candidate.version}",
    }
    steps = [{"weight": round(share * 100), "pause": window} for share in plan.steps]
    return {
        ROLLOUT_FILE: render("argo/rollout.yaml.j2", **common, replicas=replicas, steps=steps),
        ANALYSIS_FILE: render(
            "argo/analysis-template.yaml.j2",
            **common,
            variant=plan.candidate.name,
            version=plan.candidate.version,
            window=window,
            metrics=metrics,
            prometheus=prometheus,
        ),
    }


def write_plan(
    plan: RolloutPlan, directory: str, *, name: str, namespace: str, replicas: int, prometheus: str
) -> list[Path]:
    """Write :func:`manifests` into ``directory`` (created); returns the paths written."""
    from prodai_cli.config import write_atomic

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in manifests(
        plan, name=name, namespace=namespace, replicas=replicas, prometheus=prometheus
    ).items():
        path = target / filename
        write_atomic(path, text)
        written.append(path)
    return written
