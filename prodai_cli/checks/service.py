"""Checklist items about the service itself: health, the registry, the docs page, the load-test evidence."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from prodai_cli.checks.common import age_days, registry_info, served_registered, show_age
from prodai_cli.checks.result import CheckResult, failed, passed, warned
from prodai_cli.errors import ModelNotFoundError, ProdaiError

if TYPE_CHECKING:
    from prodai_cli.abconfig import StaleVariant
    from prodai_cli.checks.context import CheckContext, ServedVersion


def check_health(ctx: CheckContext) -> CheckResult:
    """``/health/live`` and ``/health/ready`` answer 200 and ``/health`` reports every model loaded."""
    live = ctx.client.get("/health/live")
    ready = ctx.client.get("/health/ready")
    health = ctx.health()
    evidence = (
        f"/health/live {live.status_code}, /health/ready {ready.status_code}, /health status {health.get('status')!r}"
    )
    if live.status_code == 200 and ready.status_code == 200:
        return passed("health", evidence)
    if ready.status_code == 503:
        reason = ""
        with contextlib.suppress(ValueError, AttributeError):
            reason = str(ready.json().get("reason") or "")
        return failed(
            "health",
            f"{evidence}; not ready: {reason or 'no reason given'}",
            "Wait until the model is loaded (see the server's log for a load error), then run check again",
        )
    return failed("health", evidence, "Serve with prodai serve (it has /health/live and /health/ready)")


def check_registry(ctx: CheckContext) -> CheckResult:
    """Every served version is a registered version, and one of them carries an alias.

    The evidence names each served version's latest rollout (``prodai rollout`` tags it), and a rollout
    left unfinished (its weights half-way) is a warning until it is resumed or aborted.
    """
    registered, problems = served_registered(ctx)
    notes = []
    aliased = False
    for served in registered:
        try:
            info = registry_info(ctx, served)
        except ModelNotFoundError:
            problems.append(f"{served} is not in the registry ({ctx.settings.tracking_uri.split('?')[0]})")
            continue
        if info.aliases:
            aliased = True
        notes.append(f"{served} registered, aliases: {', '.join(info.aliases) or 'none'}{_last_rollout(info.tags)}")
    if problems:
        return failed(
            "registry",
            "; ".join(problems + notes),
            "Serve registered versions: prodai register DIR --name NAME, then prodai serve --model NAME@production",
        )
    unfinished = _unfinished_rollout(ctx)
    if unfinished:
        return warned(
            "registry",
            "; ".join([*notes, unfinished]),
            "Continue it with `prodai rollout --resume`, or put the stable split back with `prodai rollout --abort`",
        )
    stale = _stale_variants(ctx)
    if stale:
        from prodai_cli.abconfig import resplit_command

        model = ctx.settings.config.ab.model or ""
        return warned(
            "registry",
            "; ".join(notes + [f"{s.describe(model)}: it still serves v{s.version}" for s in stale]),
            f"Make the variants follow their aliases again: {resplit_command(ctx.settings.config)} "
            "(the server picks the new split up without a restart)",
        )
    if not aliased:
        if ctx.pending_alias:
            notes.append(f"alias {ctx.pending_alias} moves here when ship passes")
            return passed("registry", "; ".join(notes))
        names = sorted({v.name for v in registered})
        return failed(
            "registry",
            "; ".join(notes) + "; no served version has an alias",
            f"Point an alias at it: prodai ship {registered[0]} (gated), or prodai models promote "
            f"{names[0]} {registered[0].version} --alias production",
        )
    return passed("registry", "; ".join(notes))


def _last_rollout(tags: dict[str, str]) -> str:
    """``; last rollout succeeded 2h ago (4/4 steps, run 1a2b3c4d)`` from a version's tags, or ''."""
    status = tags.get("prodai.rollout.status")
    if not status:
        return ""
    days = age_days(tags.get("prodai.rollout.at"))
    ago = f" {show_age(days)} ago" if days is not None else ""
    run = (tags.get("prodai.rollout.run_id") or "")[:8]
    steps = tags.get("prodai.rollout.steps") or "?"
    return f"; last rollout {status.replace('_', ' ')}{ago} ({steps} steps, run {run})"


def _unfinished_rollout(ctx: CheckContext) -> str | None:
    """What an unfinished rollout left behind (``.prodai/rollout.json`` still ``running``), else None."""
    import json

    from prodai_cli.config import ROLLOUT_STATE_FILENAME

    path = ctx.settings.state_dir / ROLLOUT_STATE_FILENAME
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("status") != "running":
            return None
        plan = state["plan"]
        weights = ", ".join(f"{name}={float(w):.0%}" for name, w in (state.get("weights") or {}).items())
        return (
            f"a rollout of {plan['model']}/{plan['candidate']['version']} is unfinished at step "
            f"{int(state.get('step', 0)) + 1} of {len(plan['steps'])}: weights {weights or 'not changed yet'}"
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"the rollout state {path} cannot be read ({exc})"


def _stale_variants(ctx: CheckContext) -> list[StaleVariant]:
    """A/B variants set by alias whose alias moved since (see docs/ab.md); empty when that cannot be asked."""
    from prodai_cli.abconfig import registry_alias_version, stale_variants

    try:
        return stale_variants(ctx.settings.config, registry_alias_version(ctx.settings))
    except ProdaiError:
        return []


def check_docs(ctx: CheckContext) -> CheckResult:
    """``/docs`` and ``/openapi.json`` answer, and every served version has a description."""
    docs = ctx.client.get("/docs")
    spec = ctx.client.get("/openapi.json")
    problems = []
    assets_note = ""
    if docs.status_code != 200:
        problems.append(f"/docs answered {docs.status_code}")
    else:
        offline_problems, assets_note = _docs_offline(ctx, docs.text)
        problems.extend(offline_problems)
    paths: dict[str, object] = {}
    if spec.status_code == 200:
        try:
            paths = spec.json().get("paths") or {}
        except (ValueError, AttributeError):
            problems.append("/openapi.json is not a JSON object")
    else:
        problems.append(f"/openapi.json answered {spec.status_code}")
    if spec.status_code == 200 and "/predict" not in paths:
        problems.append("/openapi.json does not describe /predict")
    registered, served_problems = served_registered(ctx)
    undescribed: list[str] = []
    described: list[str] = []
    for served in registered:
        try:
            info = registry_info(ctx, served)
        except ModelNotFoundError:
            undescribed.append(f"{served} (not in the registry)")
            continue
        (described if info.description.strip() else undescribed).append(str(served))
    if undescribed:
        problems.append(f"no description: {', '.join(undescribed)}")
    problems.extend(served_problems)
    evidence = f"/docs {docs.status_code}{assets_note}, /openapi.json {spec.status_code} ({len(paths)} paths)"
    if described:
        evidence += f"; described: {', '.join(described)}"
    if problems:
        offline = any("external host" in p or "asset" in p or "no script" in p for p in problems)
        hints = []
        if offline:
            hints.append(
                "Serve /docs with its assets from the server itself (prodai serve does: Swagger UI from the "
                "swagger-ui-bundle package under /docs/assets/)"
            )
        if undescribed or not offline:
            hints.append(
                "Describe versions when registering (prodai register DIR --name NAME --description TEXT); "
                "an existing version's description can be set in the MLflow UI"
            )
        hint = "; ".join(hints)
        return failed("docs", f"{evidence}; {'; '.join(problems)}", hint)
    return passed("docs", evidence)


def _docs_offline(ctx: CheckContext, html: str) -> tuple[list[str], str]:
    """Problems with ``/docs`` offline (assets from other hosts, or its own assets not answering), and a note."""
    from prodai_cli.serving.docs import external_hosts, local_assets

    problems = []
    hosts = external_hosts(html)
    if hosts:
        problems.append(f"/docs loads assets from external host(s) {', '.join(hosts)}: it is blank offline")
    assets = local_assets(html)
    broken = [f"{path} {status}" for path in assets if (status := ctx.client.get(path).status_code) != 200]
    if broken:
        problems.append(f"/docs assets do not answer: {', '.join(broken)}")
    if not assets and not hosts:
        problems.append("/docs loads no script: it is not an interactive API page")
    note = f" ({len(assets)} assets served by the server, no external host)" if assets and not problems else ""
    return problems, note


def check_loadtest(ctx: CheckContext) -> CheckResult:
    """Every served version passed a load test (``prodai loadtest`` or ``prodai ship``) recently enough.

    A run that several versions answered (an A/B split) counts for each of them on its own figures; the
    evidence says so. The fix hint names the version that lacks a load test, not merely the first one served.
    """
    max_days = ctx.settings.config.check.loadtest_max_age_days
    registered, problems = served_registered(ctx)
    notes = []
    untested: list[ServedVersion] = []
    for served in registered:
        try:
            tags = registry_info(ctx, served).tags
        except ModelNotFoundError:
            problems.append(f"{served} is not in the registry")
            continue
        verdict = tags.get("prodai.loadtest.passed")
        days = age_days(tags.get("prodai.loadtest.at"))
        run = (tags.get("prodai.loadtest.run_id") or "")[:8]
        mixed = tags.get("prodai.loadtest.mixed") or ""
        shared = f"; the run was mixed: {mixed}" if mixed else ""
        if verdict is None:
            problems.append(f"{served} was never load-tested")
            untested.append(served)
        elif verdict != "true":
            ago = f" {show_age(days)} ago" if days is not None else ""
            problems.append(f"{served}: its last load test failed{ago} (run {run}{shared})")
            untested.append(served)
        elif days is None or days > max_days:
            shown = show_age(days) if days is not None else "of unknown age"
            problems.append(f"{served}: its last passing load test is {shown} old (max {max_days:g} days)")
            untested.append(served)
        else:
            requests = tags.get("prodai.loadtest.requests")
            own = f", {requests} requests answered by it" if mixed and requests else ""
            notes.append(f"{served} passed {show_age(days)} ago (run {run}{own}{shared})")
    if problems:
        example = str(untested[0]) if untested else str(registered[0]) if registered else "NAME/VERSION"
        # Behind an A/B split a load test reaches every arm only with many user ids; its evidence then goes
        # to each version that answered.
        spread = " --user-ids 100" if len(registered) > 1 else ""
        return failed(
            "loadtest",
            "; ".join(problems + notes),
            f"prodai loadtest --url {ctx.url} --model {example}{spread} (or prodai ship {example}, which "
            "load-tests first)",
        )
    return passed("loadtest", "; ".join(notes))
