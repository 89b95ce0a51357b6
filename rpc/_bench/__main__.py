"""``python -m rpc._bench``: the bench on its own (``lanerpc bench`` is the same)."""

import sys

from rpc._bench._run import main

sys.exit(main())
