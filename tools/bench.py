"""The bench, now ``lanerpc bench`` (rpc/_bench/): kept so ``python tools/bench.py`` still runs."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rpc._bench._run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
