"""`python -m featcache` (and `torchrun -m featcache`) runs the command line."""

from featcache_cli.main import main

if __name__ == "__main__":
    main()
