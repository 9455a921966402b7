"""``python -m embedq.worker``: the same as ``embedq-worker``."""

import sys

from .cli import main

sys.exit(main())
