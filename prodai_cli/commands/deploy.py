"""prodai deploy: build the image and run it (docker), start a stack (compose) or write manifests (k8s); manage it."""

from __future__ import annotations

from typing import Annotated

import typer

from prodai_cli.commands._common import JsonOption, console, settings

# The group's help is the callback's docstring (the deploy itself), so `prodai deploy --help` shows its example.
app = typer.Typer(invoke_without_command=True)

NameArg = Annotated[str | None, typer.Argument(help="Deployment name (default: the only one).")]


def _size(num: int | None) -> str:
    return f"{(num or 0) / 1e6:,.0f} MB"


@app.callback()
def deploy(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Option("--target", "-t", help="docker, compose or k8s.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Serve this model, not the config's.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Image tag (default prodai-MODEL:VERSIONS).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Deployment name (default prodai-MODEL).")] = None,
    port: Annotated[int | None, typer.Option("--port", "-p", help="Host port (deploy.port).", min=1, max=65535)] = None,
    gpu: Annotated[bool | None, typer.Option("--gpu/--cpu", help="CUDA image and a GPU request (deploy.gpu).")] = None,
    base_image: Annotated[str | None, typer.Option("--base-image", help="Base image (deploy.base_image).")] = None,
    no_build: Annotated[bool, typer.Option("--no-build", help="Reuse the image of this tag; do not build.")] = False,
    replicas: Annotated[
        int | None, typer.Option("--replicas", "-r", help="Server replicas, compose and k8s (deploy.replicas).", min=1)
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", help="Job workers beside the server, compose and k8s (deploy.workers; 0: none).", min=0, max=64
        ),
    ] = None,
    offline: Annotated[
        bool | None,
        typer.Option("--offline/--pull", help="compose: Redis/Prometheus from Debian's packages (deploy.offline)."),
    ] = None,
    json_flag: JsonOption = False,
) -> None:
    """Build the image of the model versions the config serves and deploy it, then wait until it is ready.

    The build context (.prodai/build/TAG/) holds the models, the resolved prodai.yaml and a wheelhouse made
    on this machine, so the image builds with networking disabled.

    A compose redeploy over a running stack is a rolling update behind its load balancer.

    Example: prodai deploy --model sentiment@production --port 8080
    Example: prodai deploy --target compose --replicas 3 --offline
    Example: prodai deploy --target compose --workers 2
    """
    if ctx.invoked_subcommand is not None:
        return
    from prodai_cli.deploy.lifecycle import deploy as run_deploy

    out = console(ctx, json_flag)
    project = settings(ctx)
    overrides = {
        k: v for k, v in {"replicas": replicas, "workers": workers, "offline": offline}.items() if v is not None
    }
    if overrides:
        import dataclasses

        deploy_section = project.config.deploy.model_copy(update=overrides)
        project = dataclasses.replace(project, config=project.config.model_copy(update={"deploy": deploy_section}))
    with out.err.status("Planning the deployment") as spinner:

        def progress(line: str) -> None:
            out.debug(line)
            spinner.update(f"[dim]{line.strip()[:100]}[/dim]" if line.strip() else "Deploying")

        result = run_deploy(
            project,
            target=target,
            model_ref=model,
            tag=tag,
            name=name,
            port=port,
            gpu=gpu,
            base_image=base_image,
            build=not no_build,
            progress=progress,
        )
    for warning in result.plan.warnings:
        out.warning(warning)
    record = result.record
    out.result(result.to_dict())
    versions = ", ".join(f"{record.model}/{v}" for v in record.versions)
    if record.target == "docker":
        out.success(
            f"{record.name} is ready at {record.url} ({versions}; image {record.image}, "
            f"{_size(record.image_size_bytes)}; ready after {result.ready_after_s or 0:.1f}s)"
        )
    else:
        where = "started" if result.started else "written"
        out.success(f"{record.target} deployment {record.name} {where}: {record.files_dir} ({versions})")
    if not out.json_mode:
        for step in result.next_steps:
            out.info(f"  next: {step}")


@app.command("status")
def status(ctx: typer.Context, json_flag: JsonOption = False) -> None:
    """Show prodai's deployments and the live state of their containers.

    Example: prodai deploy status --json
    """
    from prodai_cli.deploy.lifecycle import status as deployments

    out = console(ctx, json_flag)
    entries = deployments(settings(ctx))
    if out.json_mode:
        out.result(entries)
        return
    if not entries:
        out.info("No deployments yet. Try: prodai deploy")
        return
    rows = [
        (
            e["name"],
            e["target"],
            e.get("state"),
            e.get("health") or "",
            f"{e['replicas_running']}/{len(e.get('replicas') or [])}" if "replicas_running" in e else "",
            e["url"],
            e["image"],
            f"{e['model']}/{e['version']}",
        )
        for e in entries
    ]
    out.table(["name", "target", "state", "health", "replicas", "url", "image", "serving"], rows)


@app.command("logs")
def logs(
    ctx: typer.Context,
    name: NameArg = None,
    lines: Annotated[int, typer.Option("--tail", "-n", help="Lines from the end.", min=1)] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    json_flag: JsonOption = False,
) -> None:
    """Print the container's log lines (the server's JSON logs).

    Example: prodai deploy logs prodai-sentiment --tail 50
    """
    import sys

    from prodai_cli.deploy import lifecycle

    out = console(ctx, json_flag)
    project = settings(ctx)
    deployment = lifecycle.default_name(project, name)
    if follow and not out.json_mode:
        for chunk in lifecycle.follow_logs(project, deployment, lines=lines):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        return
    text = lifecycle.logs(project, deployment, lines=lines)
    out.result({"name": deployment, "lines": text.splitlines()}, human=text)


@app.command("stop")
def stop(ctx: typer.Context, name: NameArg = None, json_flag: JsonOption = False) -> None:
    """Stop and remove a deployment's container (the record stays, for rollback).

    Example: prodai deploy stop prodai-sentiment
    """
    from prodai_cli.deploy import lifecycle

    out = console(ctx, json_flag)
    project = settings(ctx)
    deployment = lifecycle.default_name(project, name)
    with out.status(f"Stopping {deployment}"):
        record = lifecycle.stop(project, deployment)
    out.result(record.to_dict())
    out.success(f"Stopped and removed {record.name}")


@app.command("rollback")
def rollback(ctx: typer.Context, name: NameArg = None, json_flag: JsonOption = False) -> None:
    """Roll the previous image of a deployment out again: its replicas serve before the current ones stop.

    Example: prodai deploy rollback prodai-sentiment
    """
    from prodai_cli.deploy import lifecycle

    out = console(ctx, json_flag)
    project = settings(ctx)
    deployment = lifecycle.default_name(project, name)
    with out.err.status(f"Rolling {deployment} back") as spinner:

        def progress(line: str) -> None:
            out.debug(line)
            spinner.update(f"[dim]{line.strip()[:100]}[/dim]")

        record = lifecycle.rollback(project, deployment, progress=progress)
    out.result(record.to_dict())
    out.success(f"{record.name} runs {record.image} again ({record.model}/{record.version}) at {record.url}")
