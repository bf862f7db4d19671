"""``prodai models delete-alias`` / ``delete-version``: remove from the registry only what nothing uses.

Before anything is deleted, every user this machine knows of is asked: the A/B split (``ab:``, a variant
that names the version, the alias, or an alias that resolves to the version), the model the config serves
when A/B is off (``serving.model``, ``registry.default_model``), the deployments recorded under
``.prodai/deployments/`` that are not stopped, and, for a version, the aliases that point at it (MLflow
would drop them with it). Any user refuses the deletion (:class:`~prodai_cli.errors.InUseError`, exit 1)
and names each one; nothing is deleted then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prodai_cli.errors import InUseError, ModelNotFoundError, ProdaiError

if TYPE_CHECKING:
    from prodai_cli.config import Settings
    from prodai_cli.registry import Registry


def _where(settings: Settings) -> str:
    return settings.path.name if settings.path is not None else "the embedded defaults"


def _alias_version(registry: Registry, name: str, alias: str) -> int | None:
    from prodai_cli.refs import ModelRef

    try:
        return registry.get_version(ModelRef(name=name, alias=alias)).version
    except ModelNotFoundError:
        return None


def _config_users(
    settings: Settings, registry: Registry, name: str, *, alias: str | None, version: int | None
) -> list[str]:
    """Who in the config uses ``name@alias`` (alias given) or ``name/version`` (version given)."""
    from prodai_cli.refs import parse_model_ref

    config = settings.config
    where = _where(settings)
    users = []
    ab = config.ab
    if ab.enabled and ab.model == name:
        for variant, spec in ab.variants.items():
            if alias is not None and (spec.version == alias or spec.alias == alias):
                users.append(f"A/B variant {variant} ({where}) was set by it")
            if version is not None:
                served = spec.version if isinstance(spec.version, int) else _alias_version(registry, name, spec.version)
                if served == version:
                    users.append(f"A/B variant {variant} ({where}) serves it")
    for key, text in (
        ("serving.model", config.serving.model),
        ("registry.default_model", config.registry.default_model),
    ):
        if not text:
            continue
        try:
            ref = parse_model_ref(text)
        except ProdaiError:
            continue
        if ref.name != name:
            continue
        if alias is not None and ref.alias == alias:
            users.append(f"{key} ({where}) is {text}")
        if version is not None and (
            ref.version == version or (ref.alias is not None and _alias_version(registry, name, ref.alias) == version)
        ):
            users.append(f"{key} ({where}) is {text}")
    return users


def _deployment_users(settings: Settings, name: str, version: int) -> list[str]:
    from prodai_cli.deploy import records

    users = []
    for record in records.list_records(settings):
        if record.model != name or record.status == "stopped":
            continue
        if version == record.version or version in (record.versions or []):
            users.append(f"deployment {record.name} ({record.target}, {record.status}) serves it")
    return users


def delete_alias(settings: Settings, name: str, alias: str) -> dict[str, Any]:
    """Delete ``name@alias`` unless something uses it.

    Returns:
        ``{name, alias, version, deleted: true}`` (``version``: where the alias pointed).

    Raises:
        ModelNotFoundError: No such model or alias.
        InUseError: The config uses it (each user named); nothing deleted.

    """
    from prodai_cli.registry import Registry

    registry = Registry(settings)
    version = registry.get_version(f"{name}@{alias}").version
    users = _config_users(settings, registry, name, alias=alias, version=None)
    if users:
        raise InUseError(
            f"{name}@{alias} is in use: {'; '.join(users)}",
            hint="Point those at a version first (prodai ab-set v3=100%, or edit the config), then delete the alias",
        )
    registry.delete_alias(name, alias)
    return {"name": name, "alias": alias, "version": version, "deleted": True}


def delete_version(settings: Settings, name: str, version: int) -> dict[str, Any]:
    """Delete ``name/version`` (and its cached files) unless something uses it.

    Returns:
        ``{name, version, deleted: true}``.

    Raises:
        ModelNotFoundError: No such model or version.
        InUseError: An alias points at it, the config or a deployment uses it (each named); nothing deleted.

    """
    from prodai_cli.refs import ModelRef
    from prodai_cli.registry import Registry

    registry = Registry(settings)
    info = registry.get_version(ModelRef(name=name, version=version))
    users = [f"alias {alias} points at it" for alias in info.aliases]
    users += _config_users(settings, registry, name, alias=None, version=version)
    users += _deployment_users(settings, name, version)
    if users:
        raise InUseError(
            f"{name}/{version} is in use: {'; '.join(users)}",
            hint="Move its aliases (prodai models promote), take it out of the A/B split (prodai ab-set) and "
            "stop its deployments (prodai deploy stop NAME) first",
        )
    registry.delete_version(name, version)
    return {"name": name, "version": version, "deleted": True}
