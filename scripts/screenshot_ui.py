"""A screenshot of the explain page (GET /ui) in a headless Chromium: docs/ui.png: the command line of
``devtools.screenshot_ui`` (--help for its options).
"""

import sys

from devtools.screenshot_ui import main

if __name__ == "__main__":
    sys.exit(main())
