"""`python -m loop.cli`: the same as the `cai` console script."""

from loop.cli import main

main()
