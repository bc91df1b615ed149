"""Settings: the YAML file, ``${ENV}`` expansion, value checks and the Milvus client settings.

Imports nothing of ours but :mod:`extproc.errors`.
"""

from extproc.config.env import expand_env, resolve_relative, substitute_env
from extproc.config.milvus import MilvusSettings, load_milvus_config
from extproc.config.settings import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    DEFAULT_EMBEDDING_MODEL,
    ENV_OVERRIDES,
    CacheSettings,
    ServerSettings,
    default_config_path,
    load_config,
    parse_config,
    with_overrides,
)
from extproc.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_EMBEDDING_MODEL",
    "ENV_OVERRIDES",
    "CacheSettings",
    "ConfigError",
    "MilvusSettings",
    "ServerSettings",
    "default_config_path",
    "expand_env",
    "load_config",
    "load_milvus_config",
    "parse_config",
    "resolve_relative",
    "substitute_env",
    "with_overrides",
]
