"""The run config (`run`): pydantic models loaded from YAML once at the edge, with `CAI_` environment overrides
(`environment`). The package exports what the rest of the service reads."""

from loop.config.files import ConfigError, load_run_config, resolve_paths, save_run_config
from loop.config.run import PromptSettings, RunConfig

__all__ = ["ConfigError", "PromptSettings", "RunConfig", "load_run_config", "resolve_paths", "save_run_config"]
