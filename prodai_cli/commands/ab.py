"""prodai ab-set, ab-show and ab-shadow: split traffic between versions, see it live, copy it to a shadow."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from prodai_cli.commands._common import JsonOption, console, settings


def set_command(
    ctx: typer.Context,
    assignments: Annotated[
        list[str],
        typer.Argument(
            metavar="NAME=WEIGHT...",
            help="Variants and weights: v3, 3 or an alias, = a fraction (0.8) or a percentage (80%); sum 1.",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Registered model (default: ab.model, registry.default_model).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the diff of prodai.yaml; write nothing.")] = False,
    json_flag: JsonOption = False,
) -> None:
    """Split traffic between versions of a model; a running server picks the change up without a restart.

    Every version must exist in the registry; an alias is stored as its version number.

    The edit keeps the file's comments, is validated first and is written atomically under a lock.

    Example: prodai ab-set v1=0.8 v2=0.2 --model sentiment
    """
    from prodai_cli.abconfig import ab_set

    out = console(ctx, json_flag)
    result = ab_set(settings(ctx), assignments, model=model, dry_run=dry_run)
    if _shown_as_data(out, result, dry_run):
        return
    split = ", ".join(f"{v.name} {v.weight:.1%} (version {v.version})" for v in result.variants)
    verb = "Wrote" if result.written else "Unchanged"
    out.success(f"{verb} {result.path.name}: {result.model} {split}")


def show_command(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help="A running server; adds its live share of traffic per variant.")
    ] = None,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0, help="With --url: count the traffic of the next SECONDS (0: since start)."),
    ] = 0.0,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="PRODAI_API_KEY", help="Key sent to the server, if it wants one.")
    ] = None,
    json_flag: JsonOption = False,
) -> None:
    """Print the configured A/B weights and, with --url, the live share of traffic per variant.

    Example: prodai ab-show --url http://127.0.0.1:8000 --interval 10
    """
    from prodai_cli.abconfig import ab_show, registry_alias_version

    out = console(ctx, json_flag)
    conf = settings(ctx)
    data = ab_show(
        conf.config, url=url, api_key=api_key, interval_s=interval, alias_version=registry_alias_version(conf)
    )
    if out.json_mode:
        out.result(data)
        return
    if not data["variants"]:
        out.info("No A/B variants configured. Try: prodai ab-set v1=0.8 v2=0.2 --model NAME")
    state = "on" if data["enabled"] else "off"
    columns = ["variant", "version", "weight"] + (["requests", "live share"] if url else [])
    rows = []
    for name, entry in [*data["variants"].items(), *data["other_variants"].items()]:
        version = str(entry.get("version", "(not configured)"))
        if entry.get("stale"):
            now = f"v{entry['alias_now']}" if entry.get("alias_now") is not None else "gone"
            version += f" (stale: {entry['alias']} -> {now})"
        row = [name, version, f"{entry['weight']:.1%}" if "weight" in entry else ""]
        if url:
            share = entry["share"]
            row += [f"{entry['requests']:.0f}", "" if share is None else f"{share:.1%}"]
        rows.append(row)
    if rows:
        out.table(columns, rows, title=f"A/B {state}: {data['model'] or '(no model)'}")
    shadow = data.get("shadow")
    if shadow is not None:
        live = shadow.get("live")
        line = f"Shadow: {shadow['sample']:.0%} of answered requests copied to version {shadow['version']}"
        if live:
            agreement = "n/a" if live["agreement"] is None else f"{live['agreement']:.1%}"
            dropped = sum(live["dropped"].values())
            latency = " vs ".join(
                "n/a" if live[key] is None else f"{live[key]:.0f} ms" for key in ("primary_avg_ms", "shadow_avg_ms")
            )
            line += (
                f"; agreement {agreement} over {live['compared']:.0f} texts, {live['errors']:.0f} errors, "
                f"{dropped:.0f} dropped; model time primary vs shadow {latency}"
            )
        out.info(line)
    for line in data["stale"]:
        out.warning(f"{line}: it keeps serving the old version until ab-set runs again")
    if data["resplit"]:
        out.info(f"Follow the aliases again: {data['resplit']}")


def shadow_command(
    ctx: typer.Context,
    version: Annotated[
        str | None,
        typer.Argument(
            metavar="VERSION", help="The shadow version: v3, 3 or an alias (stored as its number).", show_default=False
        ),
    ] = None,
    sample: Annotated[str, typer.Option("--sample", help="Share of answered requests copied: 10% or 0.1.")] = "10%",
    off: Annotated[bool, typer.Option("--off", help="Stop copying requests.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the diff of prodai.yaml; write nothing.")] = False,
    url: Annotated[
        str | None,
        typer.Option("--url", help="The server running the shadow: record its comparison so far (MLflow run) first."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="PRODAI_API_KEY", help="Key sent to that server, if it wants one.")
    ] = None,
    json_flag: JsonOption = False,
) -> None:
    """Copy a share of live requests to another version and compare its answers; clients never see them.

    The copy runs after the answer is computed, is never cached, never counts against rate limits, and is
    dropped first when the server is busy. The running server picks the change up without a restart; see
    the agreement with `prodai ab-show --url URL` or in /metrics (prodai_shadow_*).

    Exit codes: 0 written, 1 unknown version, 2 bad usage or A/B off.

    With --url, the comparison the server made so far with the current shadow is recorded first, as an
    MLflow run on the shadow version (tags prodai.shadow.agreement, .compared, .run_id, .at).

    Example: prodai ab-shadow v3 --sample 10%   (stop and record: prodai ab-shadow --off --url URL)
    """
    from prodai_cli.abconfig import ab_shadow

    out = console(ctx, json_flag)
    result = ab_shadow(settings(ctx), version, sample=sample, off=off, dry_run=dry_run, url=url, api_key=api_key)
    if _shown_as_data(out, result, dry_run):
        return
    verb = "Wrote" if result.written else "Unchanged"
    if result.recorded:
        recorded = result.recorded
        out.info(
            f"Recorded the comparison with version {recorded['version']}: agreement {recorded['agreement']:.1%} "
            f"over {recorded['compared']:.0f} texts (run {recorded['run_id'][:8]})"
        )
    elif url:
        out.info("Nothing to record: the server compared no text with the current shadow")
    if result.enabled:
        out.success(
            f"{verb} {result.path.name}: {result.sample:.0%} of {result.model}'s answered requests "
            f"copied to version {result.version}"
        )
    else:
        out.success(f"{verb} {result.path.name}: shadow traffic off")


def _shown_as_data(out: Any, result: Any, dry_run: bool) -> bool:
    """Print an edit's ``--json`` document, or its diff for a dry run; True when that was all to print."""
    if out.json_mode:
        out.result(result.to_dict())
        return True
    if dry_run:
        out.result(None, human=result.diff.rstrip("\n") or "(no change)")
        out.info(f"Dry run: {result.path} not written")
        return True
    return False
