"""Layer groups: the paper's "early / mid / late / final" layers, for a model of any depth.

The paper names its groups by layer indices of PaliGemma-3B's 18-layer decoder: early 2-4, mid 5-7,
late 10-12, final = the last three (15-17), and for front patching (Appendix E) also 7-9. We read
these numbers as 0-based module indices (`model.language_model.layers[2]` is "layer 2"), which is
what code that hooks `layers[i]` uses; the final three layers of an 18-layer decoder are then 15-17.

Two ways to carry the groups to another depth L:

    "scaled"  (default) a group keeps its place and at least its share of the depth: size
              ceil(3 L / 18), start round(a L / 18), moved down if it would pass the last layer. At
              L = 18 these are exactly the paper's indices; at L = 8, groups of two layers (early 1-2,
              mid 2-3, late 4-5, final 6-7), which may share a layer, as the paper's 5-7 and 7-9 do.
    "paper"   the paper's indices taken literally (what the paper itself did on Qwen2-VL's 28-layer
              decoder and on both vision towers); final = the last three layers. An error if the
              model is too shallow.

Explicit groups (a dict of name -> layer list) are validated and used as given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

PAPER_DEPTH = 18  # PaliGemma-3B's decoder, where the paper's indices are defined
PAPER_GROUP_SIZE = 3
# Section 2.2 / Appendix D groups (attention-output patching).
PAPER_GROUPS = {"early": (2, 3, 4), "mid": (5, 6, 7), "late": (10, 11, 12)}
# Appendix E groups (front patching), labelled as in Tables 3-4.
PAPER_FRONT_SOURCES = {"2-4": (2, 3, 4), "5-7": (5, 6, 7), "7-9": (7, 8, 9), "10-12": (10, 11, 12)}
GROUP_MODES = ("scaled", "paper")


class GroupError(ValueError):
    """A layer group that cannot be used (outside the model, empty, unpaired)."""


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # round half up: Python's round(4.5) is 4


def scaled_size(depth: int, reference_depth: int = PAPER_DEPTH, size: int = PAPER_GROUP_SIZE) -> int:
    return max(1, math.ceil(size * depth / reference_depth - 1e-9))


def scale_group(layers: Iterable[int], depth: int, reference_depth: int = PAPER_DEPTH) -> tuple[int, ...]:
    """A group of the reference depth moved to `depth`: same relative start, size scaled."""
    layers = tuple(layers)
    size = scaled_size(depth, reference_depth, len(layers))
    start = min(max(_round(layers[0] * depth / reference_depth), 0), depth - size)
    return tuple(range(start, start + size))


def final_group(depth: int, size: int) -> tuple[int, ...]:
    return tuple(range(depth - size, depth))


def check_group(layers, depth: int, name: str = "group", where: str = "decoder") -> tuple[int, ...]:
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
        raise GroupError(f"{name}: layers {bad} are outside the {where}, which has layers 0..{depth - 1} "
                         f"(0-based; depth {depth})")
    if len(set(layers)) != len(layers):
        raise GroupError(f"{name}: layer group {list(layers)} repeats a layer")
    return layers


def check_pair(sources, targets, depth: int, name: str = "patch", where: str = "decoder"):
    """Source and target groups that can be paired layer by layer."""
    sources = check_group(sources, depth, f"{name} sources", where)
    targets = check_group(targets, depth, f"{name} targets", where)
    if len(sources) != len(targets):
        raise GroupError(f"{name}: {len(sources)} source layers {list(sources)} cannot be paired layer by layer "
                         f"with {len(targets)} target layers {list(targets)}; give groups of equal length")
    return sources, targets


def layer_groups(depth: int, mode="scaled") -> dict[str, tuple[int, ...]]:
    """early / mid / late / final for a model with `depth` layers (section 2.2's groups)."""
    return _groups(PAPER_GROUPS, depth, mode)


def front_groups(depth: int, mode="scaled") -> dict[str, tuple[int, ...]]:
    """Appendix E's source groups ('2-4', '5-7', '7-9', '10-12') plus 'final', for `depth` layers."""
    return _groups(PAPER_FRONT_SOURCES, depth, mode)


def _groups(paper: Mapping[str, tuple[int, ...]], depth: int, mode) -> dict[str, tuple[int, ...]]:
    if isinstance(mode, Mapping):  # explicit groups
        groups = {str(k): check_group(v, depth, f"group {k!r}") for k, v in mode.items()}
        if "final" not in groups:
            groups["final"] = final_group(depth, len(next(iter(groups.values()))) if groups else PAPER_GROUP_SIZE)
        return groups
    if mode == "paper":
        groups = {k: check_group(v, depth, f"paper group {k!r} ({v[0]}-{v[-1]})") for k, v in paper.items()}
        groups["final"] = final_group(depth, PAPER_GROUP_SIZE)
        return groups
    if mode == "scaled":
        if depth < 1:
            raise GroupError(f"a model with {depth} layers has no layer groups")
        groups = {k: scale_group(v, depth) for k, v in paper.items()}
        groups["final"] = final_group(depth, scaled_size(depth))
        return groups
    raise GroupError(f"unknown layer-group mode {mode!r}: use one of {GROUP_MODES} or a dict name -> layers")


def span(layers: Iterable[int]) -> str:
    """'2-4' for a contiguous group, '2,5,9' otherwise."""
    layers = tuple(layers)
    if len(layers) > 1 and layers == tuple(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(x) for x in layers)


def describe_groups(groups: Mapping[str, Iterable[int]], depth: int, where: str = "decoder") -> str:
    """One markdown line: which 0-based layers each group holds."""
    parts = ", ".join(f"{name} = {span(layers)}" for name, layers in groups.items())
    return f"{where} ({depth} layers, 0-based): {parts}"
