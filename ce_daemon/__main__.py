"""``python -m ce_daemon``."""

import sys

from ce_daemon.cli import main

sys.exit(main())
