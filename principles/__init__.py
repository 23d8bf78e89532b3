"""The shipped constitutions, as YAML files beside this module (data only)."""
