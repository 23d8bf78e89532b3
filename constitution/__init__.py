"""Principles: the schema, loading with file:line errors, content hashes and sampling.

Nothing heavy is imported here (no torch), so principle authors can validate files anywhere.
"""

from constitution.loader import ConstitutionError, load_constitution, resolve_constitution_path
from constitution.sampling import PrincipleSampler
from constitution.schema import Constitution, Principle, PrincipleCategory

__all__ = [
    "Constitution",
    "ConstitutionError",
    "Principle",
    "PrincipleCategory",
    "PrincipleSampler",
    "load_constitution",
    "resolve_constitution_path",
]
