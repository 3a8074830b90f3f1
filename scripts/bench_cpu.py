"""CPU per /score of the app itself, in-process, for this tree or against an earlier commit: the
command line of ``devtools.bench_cpu`` (--help for its options).
"""

import sys

from devtools.bench_cpu import main

if __name__ == "__main__":
    sys.exit(main())
