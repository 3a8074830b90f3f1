"""The reliability suite: overload, a Redis outage, a redeploy, a canary, fuzzing, a soak: the command line
of ``devtools.reliability`` (--help for its options).
"""

import sys

from devtools.reliability import main

if __name__ == "__main__":
    sys.exit(main())
