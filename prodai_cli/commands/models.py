"""prodai models: list, show, promote, delete and resolve registered models."""

from __future__ import annotations

from typing import Annotated

import typer

from prodai_cli.commands._common import JsonOption, console, settings
from prodai_cli.registry import Registry

app = typer.Typer(help="Inspect registered models and move aliases.", no_args_is_help=True)


@app.command("list")
def list_models(ctx: typer.Context, json_flag: JsonOption = False) -> None:
    """List registered models with their latest version and aliases.

    Example: prodai models list --json
    """
    out = console(ctx, json_flag)
    models = Registry(settings(ctx)).list_models()
    if out.json_mode:
        out.result([m.to_dict() for m in models])
        return
    if not models:
        out.info("No models registered yet. Try: prodai register DIR --name NAME")
        return
    rows = [
        (m.name, m.latest_version, ", ".join(f"{a}->v{v}" for a, v in sorted(m.aliases.items())), m.updated)
        for m in models
    ]
    out.table(["name", "latest", "aliases", "updated"], rows)


@app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    json_flag: JsonOption = False,
) -> None:
    """Show every version of NAME: aliases, task, created, description.

    Example: prodai models show sentiment
    """
    out = console(ctx, json_flag)
    versions = Registry(settings(ctx)).list_versions(name)
    if out.json_mode:
        out.result({"name": name, "versions": [v.to_dict() for v in versions]})
        return
    rows = [(v.version, ", ".join(v.aliases), v.task or "", v.created, v.description) for v in versions]
    out.table(["version", "aliases", "task", "created", "description"], rows, title=name)


@app.command("promote")
def promote(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(help="Version to point the alias at.")],
    alias: Annotated[str, typer.Option("--alias", "-a", help="Alias to move.")] = "production",
    json_flag: JsonOption = False,
) -> None:
    """Move ALIAS (default production) to VERSION of NAME and print who held it before.

    Example: prodai models promote sentiment 3 --alias production
    """
    out = console(ctx, json_flag)
    previous = Registry(settings(ctx)).set_alias(name, alias, version)
    out.result({"name": name, "alias": alias, "version": version, "previous": previous})
    before = f"was version {previous}" if previous is not None else "was unset"
    out.success(f"{name}@{alias} -> version {version} ({before})")


@app.command("delete-alias")
def delete_alias(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias: Annotated[str, typer.Argument(help="Alias to delete.")],
    json_flag: JsonOption = False,
) -> None:
    """Delete ALIAS of NAME, unless the A/B split or the serving config uses it (exit 1, naming each user).

    The version it pointed at stays. Exit 0 deleted, 1 unknown or in use.

    Example: prodai models delete-alias sentiment staging
    """
    from prodai_cli.model_deletion import delete_alias as delete

    out = console(ctx, json_flag)
    result = delete(settings(ctx), name, alias)
    out.result(result, human=f"Deleted {name}@{alias} (it pointed at version {result['version']})")


@app.command("delete-version")
def delete_version(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(help="Version to delete.")],
    json_flag: JsonOption = False,
) -> None:
    """Delete VERSION of NAME and its cached files, unless something uses it (exit 1, naming each user).

    Users: an alias pointing at it, the A/B split, the serving config, a deployment that is not stopped.
    Exit 0 deleted, 1 unknown or in use.

    Example: prodai models delete-version sentiment 2
    """
    from prodai_cli.model_deletion import delete_version as delete

    out = console(ctx, json_flag)
    result = delete(settings(ctx), name, version)
    out.result(result, human=f"Deleted {name} version {version}")


@app.command("resolve")
def resolve(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS, NAME/VERSION or models:/NAME@ALIAS.")],
    json_flag: JsonOption = False,
) -> None:
    """Resolve a model reference to its version and local files (downloaded once, then cached).

    Example: prodai models resolve sentiment@production
    """
    out = console(ctx, json_flag)
    resolved = Registry(settings(ctx)).resolve(ref)
    info = resolved.info
    out.result(
        {**info.to_dict(), "path": str(resolved.path)},
        human=f"{info.name} version {info.version}\t{resolved.path}",
    )
