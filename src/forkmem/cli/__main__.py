"""``python -m forkmem.cli``."""

import sys

from forkmem.cli import main

sys.exit(main())
