"""The check behind each chapter's first exercise: the student's function against the library's numbers.

    def my_measure(lm, samples):       # the student's cell: raises NotImplementedError until written
        ...
    def solution(lm, samples):          # the solution, in a toggled cell
        ...
    exercises.check(my_measure, solution, lambda: library_numbers, lm, samples[:4], "AvgSim per layer")

The book executes every notebook, so a stub that is not filled in yet must not break the build: `check`
then says so and checks the solution instead, so the page shows the path that works.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .format import decimal
from .page import show_markdown


def compare(mine, reference, atol: float = 1e-4, rtol: float = 1e-3) -> tuple[bool, float, str]:
    """(agree, largest absolute difference, why not): `mine` and `reference` as float arrays of one shape,
    equal within `atol` + `rtol` x |reference|."""
    a, b = np.asarray(mine, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape:
        return False, float("nan"), f"it has shape {a.shape}, the library's numbers have shape {b.shape}"
    gap = float(np.max(np.abs(a - b))) if a.size else 0.0
    ok = bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))
    return ok, gap, "" if ok else f"the largest difference is {decimal(gap, 2)}"


def check(
    student: Callable,
    solution: Callable,
    reference: Callable[[], object],
    lm,
    samples,
    what: str,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> bool:
    """Run `student(lm, samples)` (or, while it raises NotImplementedError, `solution(lm, samples)`), compare
    it with `reference()` (the library's numbers on the same samples), and say on the page what happened.
    Returns whether they agree."""
    try:
        mine, whose = student(lm, samples), "Your function"
    except NotImplementedError:
        mine, whose = solution(lm, samples), None
    ok, gap, why = compare(mine, reference(), atol, rtol)
    n = len(samples)
    said = f"on {n} sample{'s' if n != 1 else ''}"
    if whose is None:
        head = (
            "**Not written yet.** Your function still raises the not-implemented error, so the solution "
            f"was checked instead: it {'agrees' if ok else 'disagrees'} with the library's {what} {said}"
        )
    else:
        head = f"**{'Passed' if ok else 'Not yet'}.** {whose} {'agrees' if ok else 'disagrees'} "
        head += f"with the library's {what} {said}"
    tail = f" (largest difference {decimal(gap, 2)})." if ok else f": {why}."
    show_markdown(head + tail)
    return ok


__all__ = ["check", "compare"]
