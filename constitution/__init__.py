"""Principles: the schema, loading with FILE:LINE:COLUMN errors, sandboxed templates, content hashes and sampling.

Nothing heavy is imported here (no torch), so principle authors can validate files anywhere.
"""

from constitution.loader import (
    check_constitution,
    load_constitution,
    load_constitution_or_last_good,
)
from constitution.problems import ConstitutionError, Problem
from constitution.sampling import PrincipleSampler
from constitution.schema import Constitution, Example, Principle, PrincipleCategory
from constitution.source import resolve_constitution_path

__all__ = [
    "Constitution",
    "ConstitutionError",
    "Example",
    "Principle",
    "PrincipleCategory",
    "PrincipleSampler",
    "Problem",
    "check_constitution",
    "load_constitution",
    "load_constitution_or_last_good",
    "resolve_constitution_path",
]
