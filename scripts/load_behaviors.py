"""Bulk-load users' recent behaviours (and profiles) into the service's Redis store: the command line
of ``jobs.load_behaviors`` (--help for its options)."""

from jobs.load_behaviors import main

if __name__ == "__main__":
    main()
