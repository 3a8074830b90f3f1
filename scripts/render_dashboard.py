"""Renders the Grafana dashboard's panels from a real scrape: docs/dashboard.png: the command line of
``devtools.render_dashboard`` (--help for its options).
"""

import sys

from devtools.render_dashboard import main

if __name__ == "__main__":
    sys.exit(main())
