"""vlmlib: hooks, analyses, data and the book runner for studying how VLMs bring images into language.

Import what you need from the submodules (`vlmlib.models`, `vlmlib.data`, `vlmlib.trace`, ...):
this package imports nothing heavy on its own.
"""

__version__ = "0.1.0"
