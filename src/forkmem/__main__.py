"""``python -m forkmem`` runs the command line."""

import sys

from forkmem.cli import main

sys.exit(main())
