"""Run configuration: the schema (every key, its default and meaning), validation, and the packaged
config files. Config files start from ``from codex_jax.config import default_config``."""

from codex_jax.config.schema import SCHEMA, default_config, flatten, preset_config

__all__ = ["SCHEMA", "default_config", "flatten", "preset_config"]
