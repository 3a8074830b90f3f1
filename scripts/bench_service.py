"""HTTP benchmark of the real service on real Redis, driven by wrk, against a straightforward baseline: the
command line of ``devtools.bench_service`` (--help for its options).
"""

from devtools.bench_service import main

if __name__ == "__main__":
    main()
