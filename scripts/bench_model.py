"""Latency of one scoring request: torch eager, the plain ONNX export and the serving graph: the command line
of ``devtools.bench_model`` (--help for its options).
"""

from devtools.bench_model import main

if __name__ == "__main__":
    main()
