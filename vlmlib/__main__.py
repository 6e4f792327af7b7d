"""`python -m vlmlib`: see vlmlib/cli.py, or `python -m vlmlib --help`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
