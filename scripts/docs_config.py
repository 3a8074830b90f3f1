"""Writes docs/configuration.md's tables from the settings classes: the command line of
``devtools.docs_config`` (--help for its options).
"""

from devtools.docs_config import main

if __name__ == "__main__":
    main()
