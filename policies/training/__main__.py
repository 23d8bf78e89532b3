"""`python -m policies.training SPEC.json`: the one entry point of every trainer (see `policies.training.run`)."""

import sys

from policies.training.run import main

sys.exit(main())
