"""Layer sets of a model part: checked before anything runs (inside the model, non-empty, paired).

A patch pairs source and target layers one to one; a layer that is both would be patched with its own
output (a no-op row). `check_group` and `check_pair` refuse such sets with a `GroupError` that names
what is wrong. Which groups a study uses (the paper's early / mid / late / final) is the paper
layer's business (`vlmlib.paper.groups`).
"""

from __future__ import annotations

from collections.abc import Iterable

from .util import span

DECODER, VISION_TOWER = "decoder", "vision tower"


class GroupError(ValueError):
    """A layer group that cannot be used (outside the model, empty, overlapping, unpaired)."""


def check_group(layers, depth: int, name: str = "group", where: str = DECODER) -> tuple[int, ...]:
    """The group as a tuple of ints, or a GroupError saying what is wrong with it."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise GroupError(f"{name}: a layer group is a list of layer indices, got {layers!r}")
    layers = tuple(layers)
    if not layers:
        raise GroupError(f"{name}: the layer group is empty")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise GroupError(f"{name}: layer indices must be integers, got {layer!r}")
    bad = [layer for layer in layers if not 0 <= layer < depth]
    if bad:
        raise GroupError(
            f"{name}: layers {bad} are outside the {where}, which has layers 0..{depth - 1} "
            f"(0-based; depth {depth})"
        )
    if len(set(layers)) != len(layers):
        raise GroupError(f"{name}: layer group {list(layers)} repeats a layer")
    return layers


def check_pair(sources, targets, depth: int, name: str = "patch", where: str = DECODER):
    """Source and target groups that can be paired layer by layer and are not a self-patch.

    A layer that is both a source and a target would be patched with (a function of) its own output:
    that is never a configuration of the paper, and where source and target coincide it changes
    nothing (a no-op row), so overlapping groups are refused."""
    sources = check_group(sources, depth, f"{name} sources", where)
    targets = check_group(targets, depth, f"{name} targets", where)
    if len(sources) != len(targets):
        raise GroupError(
            f"{name}: {len(sources)} source layers {list(sources)} cannot be paired layer by layer "
            f"with {len(targets)} target layers {list(targets)}; give groups of equal length"
        )
    shared = sorted(set(sources) & set(targets))
    if shared:
        raise GroupError(
            f"{name}: layers {shared} are both source and target ({span(sources)} -> {span(targets)}); "
            "a layer patched with its own output is a no-op: choose disjoint groups"
        )
    return sources, targets
