"""prodai config: validate and show the resolved configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from prodai_cli.commands._common import JsonOption, console, state
from prodai_cli.commands._common import settings as project_settings
from prodai_cli.errors import ConfigError

app = typer.Typer(help="Validate and show prodai.yaml.", no_args_is_help=True)


@app.command("validate")
def validate(
    ctx: typer.Context,
    config_path: Annotated[
        str | None,
        typer.Option("--config", "-c", help="prodai.yaml to validate (default: the global --config, then lookup)."),
    ] = None,
    json_flag: JsonOption = False,
) -> None:
    """Check prodai.yaml; errors name the key and line. Exit 2 when invalid.

    Example: prodai config validate --config deploy/prodai.yaml
    """
    from prodai_cli.config import find_config_path, load_settings

    out = console(ctx, json_flag)
    path = config_path if config_path is not None else state(ctx).config_path
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        # --json prints a verdict for an invalid file too: scripts read stdout, not the stderr message.
        located = _located(find_config_path, path)
        out.result(
            {
                "valid": False,
                "path": located,
                "error": {
                    "type": type(exc).__name__,
                    "message": exc.message,
                    "hint": exc.hint,
                    "exit_code": exc.exit_code,
                },
            }
        )
        raise
    source = str(settings.path) if settings.path else "embedded defaults (no prodai.yaml)"
    out.result({"valid": True, "path": str(settings.path) if settings.path else None})
    out.success(f"Configuration is valid: {source}")


def _located(find: Callable[[str | None], Path | None], path: str | None) -> str | None:
    try:
        found = find(path)
    except ConfigError:
        return str(Path(path).resolve()) if path else None
    return str(found.resolve()) if found else None


@app.command("show")
def show(ctx: typer.Context, json_flag: JsonOption = False) -> None:
    """Print the resolved configuration (defaults and PRODAI_* overrides applied, secrets masked).

    Example: prodai config show --json | jq .serving.port
    """
    import yaml

    from prodai_cli.config import mask_secrets

    out = console(ctx, json_flag)
    settings = project_settings(ctx)
    data = mask_secrets(settings.config.model_dump(mode="json"))
    data_with_meta = {**data, "_source": str(settings.path) if settings.path else None}
    out.result(data_with_meta, human=yaml.safe_dump(data, sort_keys=False).rstrip())
