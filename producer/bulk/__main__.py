"""``python -m embedq.bulk``: the bulk commands on a machine without the worker package."""

import sys

from .cli import main

sys.exit(main(["bulk", *sys.argv[1:]]))
