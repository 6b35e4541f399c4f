"""``python -m benchmarks [WORD ...]``: run the benchmarks whose module name contains a WORD."""

import sys

from benchmarks._harness import main

sys.exit(main(sys.argv[1:]))
