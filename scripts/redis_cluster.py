"""Starts a local Redis Cluster (3 masters, 3 replicas) on spare ports until Ctrl-C: the command line of
``devtools.redis_cluster`` (--help for its options).
"""

from devtools.redis_cluster import main

if __name__ == "__main__":
    main()
