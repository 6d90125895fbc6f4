"""Configuration: the typed schema (schema.py) and the strict TOML loader (load.py)."""

from retinad.config.load import DEFAULT_CONFIG_PATH, load_config, load_default_config, parse_config
from retinad.config.schema import Settings

__all__ = ["DEFAULT_CONFIG_PATH", "Settings", "load_config", "load_default_config", "parse_config"]
