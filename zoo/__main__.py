"""`python -m zoo` (and `torchrun -m zoo`) entry point."""

import sys

from zoo.cli import main

sys.exit(main())
