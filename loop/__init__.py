"""The service: run config, storage, the iteration stages, and the CLI."""
