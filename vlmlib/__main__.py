"""`python -m vlmlib`: the book's command line (vlmlib/book/cli.py), `python -m vlmlib --help`."""

from .book.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
