"""`python -m sandbox`: the same as the `sandbox` console script."""

import sys

from sandbox.entry import main

sys.exit(main())
