"""prodai register: log a Hugging Face model directory as a new registry version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prodai_cli.commands._common import JsonOption, console, settings
from prodai_cli.errors import UsageError
from prodai_cli.registry import TASKS, Registry


def command(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help="Directory with config.json, weights and tokenizer.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Registered model name.")],
    alias: Annotated[list[str] | None, typer.Option("--alias", "-a", help="Alias to point at it (repeatable).")] = None,
    task: Annotated[
        str | None, typer.Option("--task", help=f"{' or '.join(TASKS)}; detected from the model when omitted.")
    ] = None,
    description: Annotated[str | None, typer.Option("--description", help="Version description.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Version tag k=v (repeatable).")] = None,
    json_flag: JsonOption = False,
) -> None:
    """Register MODEL_DIR as a new version of NAME (transformers flavor, offline).

    Example: prodai register ./my-model --name sentiment --alias staging --tag team=nlp
    """
    out = console(ctx, json_flag)
    tags: dict[str, str] = {}
    for item in tag or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"Invalid --tag {item!r}", hint="Write tags as key=value")
        tags[key] = value
    registry = Registry(settings(ctx))
    with out.status(f"Registering {model_dir} as {name}"):
        info = registry.register(
            model_dir, name, task=task, aliases=list(alias or []), description=description, tags=tags
        )
    out.result(
        {"name": info.name, "version": info.version, "uri": info.uri, "aliases": info.aliases, "task": info.task}
    )
    out.success(f"Registered {info.name} version {info.version} ({info.uri})")
