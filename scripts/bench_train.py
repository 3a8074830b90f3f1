"""Every model variant on every dataset: the results table of docs/benchmarks.md: the command line of
``devtools.bench_train`` (--help for its options).
"""

from devtools.bench_train import main

if __name__ == "__main__":
    main()
