"""``python -m rpc``: the ``lanerpc`` command."""

import sys

from rpc._cli import main

sys.exit(main())
