"""prodai keys: create, list, revoke and delete API keys (only their hashes are stored)."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, cast

import typer

from prodai_cli.commands._common import JsonOption, console
from prodai_cli.commands._common import settings as project_settings

if TYPE_CHECKING:
    from prodai_cli.config import Scope

app = typer.Typer(help="Create, list, revoke and delete API keys for the server.", no_args_is_help=True)


class ScopeChoice(StrEnum):
    """What a key may do (admin implies predict)."""

    predict = "predict"
    admin = "admin"
    jobs = "jobs"


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="Unique name (letters, digits, . _ -).")],
    scope: Annotated[
        list[ScopeChoice] | None, typer.Option("--scope", "-s", help="predict (default), jobs or admin; repeatable.")
    ] = None,
    expires: Annotated[
        float | None, typer.Option("--expires", help="Lifetime in days (default: never expires).", min=0)
    ] = None,
    json_flag: JsonOption = False,
) -> None:
    """Create a key and print it ONCE; only its sha256 hash is stored.

    The key goes in prodai.yaml (auth.keys) or in the file auth.keys_file names.

    Example: prodai keys create --name ci --scope predict --expires 90
    """
    from prodai_cli.keys import create_key

    out = console(ctx, json_flag)
    scopes = cast("list[Scope]", [s.value for s in scope] if scope else ["predict"])
    created = create_key(project_settings(ctx), name, scopes, expires)
    record = created.record
    out.result(
        {
            "name": record.name,
            "key": created.key,
            "scopes": record.scopes,
            "created": record.created,
            "expires": record.expires,
            "stored_in": str(created.stored_in),
        },
        human=created.key,
    )
    until = f"expires {record.expires}" if record.expires else "never expires"
    out.info(
        f"Created key {record.name!r} (scopes: {', '.join(record.scopes)}; {until}) in {created.stored_in}. "
        "Store it now: it cannot be shown again."
    )


@app.command("list")
def list_keys(ctx: typer.Context, json_flag: JsonOption = False) -> None:
    """List stored keys: name, scopes, dates, status and a short hash fingerprint.

    Example: prodai keys list --json
    """
    from prodai_cli.keys import list_keys as stored_keys

    out = console(ctx, json_flag)
    keys = stored_keys(project_settings(ctx))
    if out.json_mode:
        out.result([k.to_dict() for k in keys])
        return
    if not keys:
        out.info("No API keys yet. Try: prodai keys create --name NAME")
        return
    rows = [(k.name, ", ".join(k.scopes), k.status, k.created, k.expires or "never", k.fingerprint) for k in keys]
    out.table(["name", "scopes", "status", "created", "expires", "fingerprint"], rows)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the key to revoke.")],
    json_flag: JsonOption = False,
) -> None:
    """Revoke the key NAME; a running server refuses it within a second, no restart needed.

    Example: prodai keys revoke ci
    """
    from prodai_cli.keys import revoke_key

    out = console(ctx, json_flag)
    revoked = revoke_key(project_settings(ctx), name)
    out.result({"name": name, "revoked": True, "already_revoked": revoked.already_revoked})
    if revoked.already_revoked:
        out.success(f"Key {name!r} was already revoked")
    else:
        out.success(f"Revoked key {name!r} in {revoked.stored_in}")


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the key to delete.")],
    force: Annotated[
        bool, typer.Option("--force", help="Delete a key that is still active (it stops working at once).")
    ] = False,
    json_flag: JsonOption = False,
) -> None:
    """Delete the record of key NAME (revoke it first; --force deletes an active key).

    Revoked records stay by default so a server can answer "revoked"; delete one when nobody
    needs that answer any more. Exit codes: 0 deleted, 1 no such key, 2 still active without --force.

    Example: prodai keys revoke ci && prodai keys delete ci
    """
    from prodai_cli.errors import UsageError
    from prodai_cli.keys import delete_key, list_keys

    out = console(ctx, json_flag)
    settings = project_settings(ctx)
    info = next((k for k in list_keys(settings) if k.name == name), None)
    if info is not None and info.status == "active" and not force:
        raise UsageError(
            f"Key {name!r} is still active",
            hint=f"Revoke it first (prodai keys revoke {name}) or pass --force",
        )
    deleted = delete_key(settings, name)
    out.result({"name": name, "deleted": True, "was_revoked": deleted.was_revoked})
    out.success(f"Deleted key {name!r} from {deleted.stored_in}")
