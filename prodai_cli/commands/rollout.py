"""prodai rollout: a canary that moves traffic step by step, judges live SLOs, and promotes or rolls back."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from prodai_cli.commands._common import JsonOption, console, settings
from prodai_cli.errors import EXIT_FAILURE, UsageError

STATUS_WORD = "status"


def command(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="MODEL@CANDIDATE | status",
            help="The candidate (sentiment@staging, sentiment/3), or `status` for the last rollout.",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        str, typer.Option("--steps", help="Candidate's share per step, ending at 100%.")
    ] = "5%,25%,50%,100%",
    interval: Annotated[str, typer.Option("--interval", help="How long each step is judged (30s, 2m).")] = "2m",
    slo: Annotated[
        list[str] | None,
        typer.Option(
            "--slo",
            help="SLO on the candidate's live traffic (repeatable): 'p95 < 300ms', 'error_rate < 1%', "
            "'agreement > 90%' (answers compared with the stable version's by shadowing it).",
        ),
    ] = None,
    min_requests: Annotated[
        int, typer.Option("--min-requests", min=1, help="Candidate requests a step needs before it is judged.")
    ] = 20,
    alias: Annotated[
        str | None,
        typer.Option(
            "--alias", help="Alias moved to the candidate at the end (default: the stable's, else production)."
        ),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="The server whose /metrics are judged (default: serving.host:port).")
    ] = None,
    deployment: Annotated[
        str | None,
        typer.Option(
            "--deployment",
            help="A docker or compose deployment: every replica must reload each step, and the window is the sum "
            "of all replicas' counters (also chosen when --url is a deployment's URL).",
        ),
    ] = None,
    render: Annotated[
        str | None,
        typer.Option(
            "--render",
            help="Write the equivalent Argo Rollouts plan (Rollout + AnalysisTemplate) for the k8s deployment "
            "--deployment (default: deploy.name, else prodai-MODEL) into this directory; change nothing.",
        ),
    ] = None,
    prometheus: Annotated[
        str, typer.Option("--prometheus", help="With --render: the cluster's Prometheus the analysis queries.")
    ] = "http://prometheus.monitoring.svc:9090",
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="PRODAI_API_KEY", help="Key for the server's /metrics, if needed.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the unfinished rollout whose process died.")
    ] = False,
    abort: Annotated[
        bool, typer.Option("--abort", help="Stop the unfinished rollout and restore the old split.")
    ] = False,
    json_flag: JsonOption = False,
) -> None:
    """Canary a version: raise its share of traffic step by step, judge its live SLOs, promote or roll back.

    Each step sets the A/B weights (stable=1-p, candidate=p, sticky per user) through the same atomic edit as
    ab-set, waits until the server reloaded them, and judges only the candidate's requests of that step from
    the server's /metrics. The first SLO breach restores the original split at once and exits 1; when every
    step passes the alias moves to the candidate (exit 0). State lives in .prodai/rollout.json: a rollout
    whose process died continues with --resume or is undone with --abort; `prodai rollout status` shows it.

    Against a docker or compose deployment (--deployment NAME, or --url its URL) every replica is read at its
    address on the deployment's network. For k8s, --render DIR writes the same plan as Argo Rollouts manifests
    (a hand-off: it needs Argo Rollouts and Prometheus in the cluster).

    Exit codes: 0 promoted (or status/dry run/abort done), 1 rolled back or the server failed, 2 bad usage.

    Example: prodai rollout sentiment@staging --steps 5%,25%,50%,100% --interval 2m --slo "p95 < 300ms"
    --slo "error_rate < 1%"

    Example: prodai rollout sentiment@staging --deployment sentiment --slo "p95 < 300ms"

    Example: prodai rollout sentiment@staging --render k8s-rollout/ --slo "p95 < 300ms" --slo "agreement > 90%"
    """
    from prodai_cli import rollout

    out = console(ctx, json_flag)
    conf = settings(ctx)
    if sum([resume, abort, target == STATUS_WORD]) > 1:
        raise UsageError("Give one of --resume, --abort and `status`")
    if target == STATUS_WORD:
        state = rollout.load_state(conf)
        if state is None:
            out.result({"status": None}, human="No rollout has run in this project")
            return
        _show(out, state.to_dict())
        return
    if abort:
        state = rollout.abort_rollout(conf, api_key=api_key)
        _show(out, state.to_dict())
        return
    if resume:
        from prodai_cli.rollout.engine import resumable_state

        state = resumable_state(conf)
    else:
        if not target:
            raise UsageError("Name the candidate, e.g. prodai rollout sentiment@staging (or --resume, status)")
        from prodai_cli.rollout.engine import refuse_if_unfinished, start_state
        from prodai_cli.rollout.replicas import resolve_deployment
        from prodai_cli.slo import parse_duration

        if render is None:
            refuse_if_unfinished(conf)
            record = resolve_deployment(conf, deployment, url)
        else:
            record = None
        if record is not None:
            out.info(f"Judging every replica of deployment {record.name} ({record.target}) at {record.url}")
            url = record.url
        plan = rollout.plan_rollout(
            conf,
            target,
            steps=rollout.parse_steps(steps),
            interval_s=parse_duration(interval, what="--interval"),
            slos=list(slo or ["error_rate < 1%"]),
            min_requests=min_requests,
            url=(url or _default_url(conf)).rstrip("/"),
            promote_alias=alias,
            deployment=(record.name, record.target) if record else None,
        )
        if render is not None:
            from prodai_cli.deploy.plan import docker_name
            from prodai_cli.rollout.argo import write_plan

            deploy_config = conf.config.deploy
            written = write_plan(
                plan,
                render,
                # The name `prodai deploy --target k8s` gives the Deployment by default.
                name=deployment or deploy_config.name or f"prodai-{docker_name(plan.model)}",
                namespace=deploy_config.namespace,
                replicas=deploy_config.replicas,
                prometheus=prometheus,
            )
            out.result(
                {"rendered": [str(path) for path in written], "plan": plan.to_dict()},
                human="Wrote "
                + ", ".join(str(path) for path in written)
                + ": apply them where Argo Rollouts and Prometheus run (see docs/rollout-deployments.md)",
            )
            return
        if dry_run:
            _show_plan(out, plan.to_dict())
            return
        state = start_state(conf, plan)
    try:
        final = rollout.run_rollout(conf, state, api_key=api_key, report=out.info)
    except KeyboardInterrupt:
        out.warning("Interrupted mid-rollout: the weights stay as `prodai rollout status` shows")
        out.info("Continue with `prodai rollout --resume`, or undo with `prodai rollout --abort`")
        raise
    _show(out, final.to_dict())
    if final.status != "succeeded":
        raise typer.Exit(EXIT_FAILURE)


def _default_url(conf: Any) -> str:
    host = conf.config.serving.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{conf.config.serving.port}"


def _show_plan(out: Any, plan: dict[str, Any]) -> None:
    if out.json_mode:
        out.result({"dry_run": True, "plan": plan})
        return
    stable, candidate = plan["stable"], plan["candidate"]
    rows = [
        [str(i + 1), f"{1 - share:.0%}", f"{share:.0%}", f"{plan['interval_s']:g}s"]
        for i, share in enumerate(plan["steps"])
    ]
    out.table(
        [
            "step",
            f"{stable['name']} (v{stable['version']})",
            f"{candidate['name']} (v{candidate['version']})",
            "judged",
        ],
        rows,
        title=f"Rollout plan for {plan['model']} against {plan['url']}"
        + (f" (every replica of deployment {plan['deployment']})" if plan.get("deployment") else ""),
    )
    out.info(f"SLOs: {'; '.join(plan['slos'])} (each step needs {plan['min_requests']} candidate requests)")
    if plan.get("shadow_sample"):
        out.info(
            f"agreement: {plan['shadow_sample']:.0%} of the candidate's requests are also run on version "
            f"{stable['version']} (shadow) and the answers compared"
        )
    out.info(f"Then: alias {plan['promote_alias']} -> version {candidate['version']}. Dry run: nothing changed")


def _show(out: Any, state: dict[str, Any]) -> None:
    if out.json_mode:
        out.result(state)
        return
    plan = state["plan"]
    rows = []
    for entry in state["timeline"]:
        figures = entry["window"]
        slos = ", ".join(f"{s['slo']} {'ok' if s['passed'] else 'FAILED'}" for s in entry["slos"]) or "not judged"
        rows.append(
            [
                str(entry["step"]),
                f"{entry['share']:.0%}",
                f"{figures.get('requests', 0):.0f}",
                "" if figures.get("p95_ms") is None else f"{figures['p95_ms']:.0f} ms",
                "" if figures.get("error_rate") is None else f"{figures['error_rate']:.2%}",
                slos,
            ]
        )
    if rows:
        out.table(["step", "share", "requests", "p95", "errors", "SLOs"], rows, title=f"Rollout of {plan['model']}")
    weights = ", ".join(f"{name}={weight:.0%}" for name, weight in state["weights"].items()) or "not changed yet"
    line = (
        f"{state['status'].replace('_', ' ')}: rollout of v{plan['stable']['version']} -> "
        f"v{plan['candidate']['version']}; weights now {weights}"
    )
    if state["status"] == "succeeded":
        out.success(line)
    elif state["status"] == "running":
        out.warning(line + f"; at step {state['step'] + 1} of {len(plan['steps'])}")
    else:
        out.warning(line)
    if state.get("reason"):
        out.info(state["reason"])
