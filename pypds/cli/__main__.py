"""``python -m pypds.cli``."""

import sys

from .app import main

sys.exit(main())
