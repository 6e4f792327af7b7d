"""`python -m vlmlib.book [options]`: the same as `python -m vlmlib book [options]`."""

import sys

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main(["book", *sys.argv[1:]]))
