"""Which Redis layout for behaviour histories: read latency, decode cost and memory per user: the command
line of ``devtools.bench_store`` (--help for its options).
"""

from devtools.bench_store import main

if __name__ == "__main__":
    main()
