"""Where one /score spends its CPU, by stage, in-process under a profiler: the command line of
``devtools.profile_score`` (--help for its options).
"""

import sys

from devtools.profile_score import main

if __name__ == "__main__":
    sys.exit(main())
