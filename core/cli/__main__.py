"""`python -m core.cli`: the core's commands alone (how worker processes are started)."""

import sys

from core.cli.main import main

sys.exit(main())
