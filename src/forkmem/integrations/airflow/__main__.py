"""``python -m forkmem.integrations.airflow dag-processor [args]``."""

import sys

from forkmem.integrations.airflow.cli import main

sys.exit(main())
