"""``python -m se`` is the ``se`` console script."""

import sys

from se.cli import main

sys.exit(main())
