"""``python -m shmbroker``: shmctl's list, info, purge and stats (see _cli.py)."""

import sys

from ._cli import main

sys.exit(main())
