"""``python -m skyvar ...`` is the ``skyvar`` command."""

import sys

from skyvar.cli import main

sys.exit(main())
