"""The base of every run-config section: unknown keys are errors, so a typo never passes silently."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, create_model


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def settings_section(settings: type[BaseModel], *, without) -> type[Section]:
    """A run-config section with the fields of a trainer's settings, less those the loop sets itself."""
    fields = {name: (f.annotation, f) for name, f in settings.model_fields.items() if name not in without}
    return create_model(f"{settings.__name__}Section", __base__=Section, **fields)
