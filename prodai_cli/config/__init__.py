"""prodai.yaml, the project's one config file: schema, loading, editing, rendering and safe file I/O.

The ground floor of the package: it imports nothing of prodai but :mod:`prodai_cli.errors` and the two
value grammars beside it (:mod:`prodai_cli.slo`, :mod:`prodai_cli.redis_url`). Modules, one job each:

- :mod:`~prodai_cli.config.schema`: the pydantic model (every key, default and description) and Settings;
- :mod:`~prodai_cli.config.load`: find, parse with line numbers, environment overrides, validate;
- :mod:`~prodai_cli.config.edit`: round-trip edits that keep comments, validated before they are written;
- :mod:`~prodai_cli.config.render`: the documented default file, secrets masked for display;
- :mod:`~prodai_cli.config.files`: atomic replacement and file locks.

The names below are the public API; import them from ``prodai_cli.config``.
"""

from prodai_cli.config.bounds import check_yaml, read_bounded
from prodai_cli.config.edit import ConfigEdit, YamlEdit, edit_config, edit_yaml
from prodai_cli.config.files import file_lock, file_signature, write_atomic
from prodai_cli.config.load import find_config_path, load_settings, parse_config_text, round_trip_yaml
from prodai_cli.config.render import mask_secrets, render_default_config
from prodai_cli.config.schema import (
    AB_ALIAS_PATTERN,
    AB_VARIANT_NAME_PATTERN,
    AB_VERSION_PATTERN,
    AB_WEIGHT_TOLERANCE,
    API_KEY_NAME_PATTERN,
    BUILTIN_REDACTIONS,
    CHECK_ITEMS,
    CONFIG_FILENAME,
    ENV_ALIASES,
    ENV_CONFIG,
    ENV_PREFIX,
    ENV_RESERVED,
    ROLLOUT_STATE_FILENAME,
    STATE_DIRNAME,
    ABConfig,
    ABVariantConfig,
    ApiKeyRecord,
    AuthConfig,
    BatchConfig,
    BreakerConfig,
    CacheConfig,
    CascadeConfig,
    CheckConfig,
    CheckItem,
    DeployConfig,
    Device,
    FiltersConfig,
    JobsConfig,
    LimitRule,
    LoadtestConfig,
    MonitoringConfig,
    Precision,
    ProdaiConfig,
    RateLimitConfig,
    RegistryConfig,
    Scope,
    Section,
    ServingConfig,
    Settings,
    resolve_under,
)

__all__ = [
    "AB_ALIAS_PATTERN",
    "AB_VARIANT_NAME_PATTERN",
    "AB_VERSION_PATTERN",
    "AB_WEIGHT_TOLERANCE",
    "API_KEY_NAME_PATTERN",
    "BUILTIN_REDACTIONS",
    "CHECK_ITEMS",
    "CONFIG_FILENAME",
    "ENV_ALIASES",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "ENV_RESERVED",
    "ROLLOUT_STATE_FILENAME",
    "STATE_DIRNAME",
    "ABConfig",
    "ABVariantConfig",
    "ApiKeyRecord",
    "AuthConfig",
    "BatchConfig",
    "BreakerConfig",
    "CacheConfig",
    "CascadeConfig",
    "CheckConfig",
    "CheckItem",
    "ConfigEdit",
    "DeployConfig",
    "Device",
    "FiltersConfig",
    "JobsConfig",
    "LimitRule",
    "LoadtestConfig",
    "MonitoringConfig",
    "Precision",
    "ProdaiConfig",
    "RateLimitConfig",
    "RegistryConfig",
    "Scope",
    "Section",
    "ServingConfig",
    "Settings",
    "YamlEdit",
    "check_yaml",
    "edit_config",
    "edit_yaml",
    "file_lock",
    "file_signature",
    "find_config_path",
    "load_settings",
    "mask_secrets",
    "parse_config_text",
    "read_bounded",
    "render_default_config",
    "resolve_under",
    "round_trip_yaml",
    "write_atomic",
]
