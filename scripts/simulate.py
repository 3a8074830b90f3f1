"""The closed loop on simulated users against the real service, day after day: the command line of
``devtools.simulate`` (--help for its options).
"""

import sys

from devtools.simulate import main

if __name__ == "__main__":
    sys.exit(main())
