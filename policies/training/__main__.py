"""`python -m policies.training SPEC.json`: the one entry point of every trainer (see `policies.training.run`)."""

import sys

from policies.processes import die_with_parent

# Before torch is imported (seconds): a trainer whose launching process is gone must not start training.
die_with_parent()

from policies.training.run import main  # noqa: E402

sys.exit(main())
