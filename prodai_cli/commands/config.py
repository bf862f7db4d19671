"""prodai config: validate and show the resolved configuration."""

from __future__ import annotations

import typer

from prodai_cli.commands._common import JsonOption, console, settings

app = typer.Typer(help="Validate and show prodai.yaml.", no_args_is_help=True)


@app.command("validate")
def validate(ctx: typer.Context, json_flag: JsonOption = False) -> None:
    """Check prodai.yaml; errors name the key and line. Exit 2 when invalid.

    Example: prodai config validate --config deploy/prodai.yaml
    """
    out = console(ctx, json_flag)
    loaded = settings(ctx)
    source = str(loaded.path) if loaded.path else "embedded defaults (no prodai.yaml)"
    out.result({"valid": True, "path": str(loaded.path) if loaded.path else None})
    out.success(f"Configuration is valid: {source}")


@app.command("show")
def show(ctx: typer.Context, json_flag: JsonOption = False) -> None:
    """Print the resolved configuration (defaults and PRODAI_* overrides applied, secrets masked).

    Example: prodai config show --json | jq .serving.port
    """
    import yaml

    from prodai_cli.config import mask_secrets

    out = console(ctx, json_flag)
    loaded = settings(ctx)
    data = mask_secrets(loaded.config.model_dump(mode="json"))
    data_with_meta = {**data, "_source": str(loaded.path) if loaded.path else None}
    out.result(data_with_meta, human=yaml.safe_dump(data, sort_keys=False).rstrip())
