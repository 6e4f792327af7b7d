"""The paper layer: the paper's claims and the rules that test them, its transcribed values, one spec per
chapter, the tables and figures of its analyses, and a chapter's run (`setup` ... `run.finish`).
It uses the library (`vlmlib`) and nothing above it.
"""

from .run import ChapterRun, setup

__all__ = ["ChapterRun", "setup"]
