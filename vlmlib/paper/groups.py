"""Layer groups: the paper's "early / mid / late / final" layers, for a model of any depth.

The paper names its groups by the layer indices of PaliGemma-3B's 18-layer decoder: early 2-4, mid
5-7, late 10-12, final = the last three (15-17); front patching (Appendix E) writes the sources 2-4,
5-7, 7-9 and 10-12 over the final group. We read these numbers as 0-based module indices
(`model.language_model.layers[2]` is "layer 2"). The paper applies the same literal indices to
Qwen2-VL-2B's 28-layer decoder and to both vision towers (SigLIP 27 layers, Qwen2-VL's ViT 32
blocks), with final = the last three layers of each (Appendix D, E.2; Tables 2-4).

Modes:

    "paper"   the literal indices above; final = the last three layers. A GroupError when the model
              is too shallow for them to be disjoint (fewer than 16 layers).
    "scaled"  the groups carried to another depth L (identical to the paper's at L = 18):
              size s = ceil(3 L / 18), start round(a L / 18) for a group that starts at a in the
              paper, final = the last s layers; then, in order, each start is pushed past the
              previous group and pulled back so that every group fits before the next. If the groups
              do not fit, s shrinks (down to one layer); below that, a GroupError names the minimum
              depth.
    "auto"    (default) "paper" when the depth is that of the paper's model of the same family and
              part (`paper_depth`, the family's reference checkpoint: the paper reports tables for
              exactly that model), else "scaled".
    a dict    name -> layers, explicit groups, validated by the same rules ("explicit").

Rules every group set obeys (checked in `check_groups`, whatever the mode):
- every group is non-empty, inside the model, without a repeated layer, and all have one size
  (source and target layers are paired one to one);
- section 2.2's groups (early, mid, late, final) are disjoint and in this order: no direction
  patches a layer with its own output, and no two directions give the same row;
- Appendix E's source groups are all different from each other and disjoint from the target group
  (final); two sources may share layers, as the paper's own 5-7 and 7-9 share layer 7: each is a
  separate configuration written over the final group, so the shared layer is read twice from the
  clean run but never patched with its own output. When the depth cannot hold four different
  sources (fewer than 5 layers) the scaled rule drops 5-7, the group only Table 3 has (E.1.1 lists
  2-4, 7-9 and 10-12), and says so in the plan's notes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..families import UnsupportedModelError, family_named
from ..layers import DECODER, VISION_TOWER, GroupError, check_group, check_pair
from ..util import span

PAPER_DEPTH = 18  # PaliGemma-3B's decoder, where the paper's indices are defined
PAPER_GROUP_SIZE = 3
# Section 2.2 / Appendix D groups (attention-output patching), in order; final = the last three.
PAPER_GROUPS = {"early": (2, 3, 4), "mid": (5, 6, 7), "late": (10, 11, 12)}
# Appendix E source groups (front patching), labelled as in Tables 3-4; target = final.
PAPER_FRONT_SOURCES = {"2-4": (2, 3, 4), "5-7": (5, 6, 7), "7-9": (7, 8, 9), "10-12": (10, 11, 12)}
# The source group dropped first when a shallow model cannot hold four different sources.
FRONT_SOURCE_DROPPED_FIRST = "5-7"
FINAL = "final"
GROUP_MODES = ("auto", "paper", "scaled")
KINDS = ("attention", "front")


@dataclass(frozen=True)
class GroupPlan:
    """Layer groups of one part of a model, with how they were chosen."""

    groups: dict[str, tuple[int, ...]]  # name -> 0-based layers, in order; the target group is "final"
    mode: str  # "paper", "scaled" or "explicit"
    kind: str  # "attention" (section 2.2) or "front" (Appendix E)
    depth: int
    where: str = DECODER  # "decoder" or "vision tower"
    notes: tuple[str, ...] = field(default=())  # what the rule had to change, e.g. a dropped source
    dropped: tuple[str, ...] = field(default=())  # paper source groups left out (too shallow a model)

    def __getitem__(self, name: str) -> tuple[int, ...]:
        return self.groups[name]

    def __contains__(self, name) -> bool:
        return name in self.groups

    def __iter__(self):
        return iter(self.groups)

    @property
    def sources(self) -> list[str]:
        """Front patching's source groups (every group but the target)."""
        return [name for name in self.groups if name != FINAL]

    def describe(self) -> str:
        """One Markdown line: which layers each group holds, and how they were chosen."""
        how = {
            "paper": "the paper's layer indices",
            "scaled": "scaled by depth from the paper's 18-layer indices",
            "explicit": "given explicitly",
        }[self.mode]
        text = f"{describe_groups(self.groups, self.depth, self.where)}; {how} (mode `{self.mode}`)"
        return text + "".join(f". {note}" for note in self.notes)

    def to_dict(self) -> dict:
        return {
            "where": self.where,
            "depth": self.depth,
            "mode": self.mode,
            "kind": self.kind,
            "groups": {k: list(v) for k, v in self.groups.items()},
            "notes": list(self.notes),
            "dropped": list(self.dropped),
        }


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # round half up: Python's round(4.5) is 4


def scaled_size(depth: int, reference_depth: int = PAPER_DEPTH, size: int = PAPER_GROUP_SIZE) -> int:
    return max(1, math.ceil(size * depth / reference_depth - 1e-9))


def final_group(depth: int, size: int) -> tuple[int, ...]:
    return tuple(range(depth - size, depth))


# ---------------------------------------------------------------- validation


def check_groups(
    groups: Mapping[str, Iterable[int]], depth: int, kind: str, where: str = DECODER, what: str = "group"
) -> dict[str, tuple[int, ...]]:
    """Validated groups (see the module docstring's rules), or a GroupError naming the broken rule."""
    if kind not in KINDS:
        raise GroupError(f"unknown group kind {kind!r}; use one of {KINDS}")
    if not groups:
        raise GroupError(f"no layer groups given for the {where}")
    out = {str(k): check_group(v, depth, f"{what} {k!r}", where) for k, v in groups.items()}
    if FINAL not in out:
        raise GroupError(
            f"the {where}'s groups {list(out)} have no {FINAL!r} group (the target of the last-layer "
            "patches); add one"
        )
    sizes = {name: len(g) for name, g in out.items()}
    if len(set(sizes.values())) > 1:
        raise GroupError(
            f"the {where}'s groups differ in size {sizes}: sources and targets are paired layer by "
            "layer, so give every group the same number of layers"
        )
    names = list(out)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if out[a] == out[b]:
                raise GroupError(
                    f"{what}s {a!r} and {b!r} are the same layers {span(out[a])} of the {where}: "
                    "their rows would be duplicates"
                )
    if kind == "attention":
        ordered = [n for n in names if n != FINAL] + [FINAL]
        for a, b in zip(ordered, ordered[1:]):
            if max(out[a]) >= min(out[b]):
                raise GroupError(
                    f"{what}s {a!r} ({span(out[a])}) and {b!r} ({span(out[b])}) of the {where} "
                    "overlap or are out of order: section 2.2's groups must be disjoint and ordered "
                    "(early before mid before late before final)"
                )
        out = {n: out[n] for n in ordered}
    else:
        for name in names:
            if name != FINAL:
                check_pair(out[name], out[FINAL], depth, f"source group {name!r}", where)
        out = {**{n: out[n] for n in names if n != FINAL}, FINAL: out[FINAL]}
    return out


# ---------------------------------------------------------------- the rules


def paper_depth(family: str, where: str = DECODER) -> int | None:
    """The depth of the paper's model of this family in this part (its reference checkpoint's), or None."""
    try:
        return family_named(family).reference_depth(where)
    except UnsupportedModelError:
        return None


def resolve_mode(mode: str, depth: int, family: str | None = None, where: str = DECODER) -> str:
    """'auto' -> 'paper' where the paper reports this model (same family, part and depth), else 'scaled'."""
    if mode not in GROUP_MODES:
        raise GroupError(
            f"unknown layer-group mode {mode!r}: use one of {GROUP_MODES} or a dict name -> layers"
        )
    if mode != "auto":
        return mode
    return "paper" if family is not None and paper_depth(family, where) == depth else "scaled"


def _place(starts: list[int], size: int, last_start: int, strict_gap: int) -> list[int]:
    """Starts pushed forward so that consecutive groups keep `strict_gap` apart, then pulled back so the
    last one is at most `last_start` (each keeping `strict_gap` to the next)."""
    out = []
    for s in starts:
        out.append(max(s, out[-1] + strict_gap) if out else max(s, 0))
    out[-1] = min(out[-1], last_start)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1] - strict_gap)
    return out


def _scaled_attention(depth: int):
    n = len(PAPER_GROUPS) + 1
    if depth < n:
        raise GroupError(
            f"a {depth}-layer model cannot hold section 2.2's {n} disjoint groups "
            f"({', '.join([*PAPER_GROUPS, FINAL])}); it needs at least {n} layers"
        )
    size = min(scaled_size(depth), depth // n)
    starts = _place(
        [_round(g[0] * depth / PAPER_DEPTH) for g in PAPER_GROUPS.values()], size, depth - 2 * size, size
    )
    groups = {name: tuple(range(s, s + size)) for name, s in zip(PAPER_GROUPS, starts)}
    groups[FINAL] = final_group(depth, size)
    return groups, (), ()


def _scaled_front(depth: int):
    """(groups, notes, dropped source names)."""
    sources, notes, dropped = dict(PAPER_FRONT_SOURCES), [], []
    size = scaled_size(depth)
    # Sources need different starts, all ending before the final group: depth - 2 s + 1 >= n.
    while depth - 2 * size + 1 < len(sources) and size > 1:
        size -= 1
    if depth - 2 * size + 1 < len(sources):
        sources.pop(FRONT_SOURCE_DROPPED_FIRST)
        dropped.append(FRONT_SOURCE_DROPPED_FIRST)
        notes.append(
            f"A {depth}-layer part cannot hold four different source groups: source "
            f"{FRONT_SOURCE_DROPPED_FIRST} (Table 3 only; E.1.1 lists 2-4, 7-9, 10-12) is left out"
        )
    if depth - 2 * size + 1 < len(sources):
        raise GroupError(
            f"a {depth}-layer model cannot hold Appendix E's {len(sources)} different source groups "
            f"and a disjoint final group; it needs at least {len(sources) + 1} layers"
        )
    starts = _place([_round(g[0] * depth / PAPER_DEPTH) for g in sources.values()], size, depth - 2 * size, 1)
    groups = {name: tuple(range(s, s + size)) for name, s in zip(sources, starts)}
    groups[FINAL] = final_group(depth, size)
    return groups, tuple(notes), tuple(dropped)


def plan_groups(
    kind: str, depth: int, mode="auto", family: str | None = None, where: str = DECODER
) -> GroupPlan:
    """The layer groups of section 2.2 (kind "attention") or Appendix E (kind "front") for a part of a
    model with `depth` layers; `family` ("paligemma", "qwen2vl") lets "auto" recognise the paper's models."""
    if kind not in KINDS:
        raise GroupError(f"unknown group kind {kind!r}; use one of {KINDS}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise GroupError(f"a model part has a positive number of layers, got {depth!r}")
    if isinstance(mode, Mapping):
        groups = dict(mode)
        if FINAL not in groups and groups:
            groups[FINAL] = final_group(depth, len(tuple(next(iter(groups.values())))))
        return GroupPlan(check_groups(groups, depth, kind, where, "group"), "explicit", kind, depth, where)
    resolved = resolve_mode(mode, depth, family, where)
    notes: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    if resolved == "paper":
        paper = PAPER_GROUPS if kind == "attention" else PAPER_FRONT_SOURCES
        groups = {**paper, FINAL: final_group(depth, PAPER_GROUP_SIZE)}
        what = "paper group"
    else:
        groups, notes, dropped = _scaled_attention(depth) if kind == "attention" else _scaled_front(depth)
        what = "scaled group"
    try:
        checked = check_groups(groups, depth, kind, where, what)
    except GroupError as e:
        if resolved == "paper":
            raise GroupError(
                f"the paper's literal layer indices do not fit a {depth}-layer {where}: {e}. "
                "Use groups='scaled' (or 'auto') or give the groups explicitly"
            ) from None
        raise
    return GroupPlan(checked, resolved, kind, depth, where, notes, dropped)


def model_groups(lm, kind: str, mode="auto", tower: bool = False) -> GroupPlan:
    """`plan_groups` for a loaded model's decoder (or, with tower=True, its vision tower)."""
    where = VISION_TOWER if tower else DECODER
    depth = lm.num_vision_layers if tower else lm.num_layers
    return plan_groups(kind, depth, mode, lm.family.name, where)


def layer_groups(depth: int, mode="auto", family: str | None = None, where: str = DECODER) -> dict:
    """early / mid / late / final for a part with `depth` layers (section 2.2's groups), as a dict."""
    return plan_groups("attention", depth, mode, family, where).groups


def front_groups(depth: int, mode="auto", family: str | None = None, where: str = DECODER) -> dict:
    """Appendix E's source groups ('2-4', '5-7', '7-9', '10-12') plus 'final', as a dict."""
    return plan_groups("front", depth, mode, family, where).groups


def describe_groups(groups: Mapping[str, Iterable[int]], depth: int, where: str = DECODER) -> str:
    """One markdown line: which 0-based layers each group holds."""
    parts = ", ".join(f"{name} = {span(layers)}" for name, layers in groups.items())
    return f"{where} ({depth} layers, 0-based): {parts}"


# ---------------------------------------------------------------- the terms every rule, table and page uses
#
# One definition each, here: the rules (`vlmlib.paper.claims` and the chapter specs), the notebooks and the
# pages call these and never count layers themselves.


def final_layers(depth: int, family: str | None = None) -> tuple[int, ...]:
    """ "The final layers": section 2.2's final group. At the paper's depths (PaliGemma-3B's 18 layers,
    Qwen2-VL-2B's 28) the paper's literal last three; at any other depth the three of 18 scaled up
    (ceil(3 L / 18): 2 at 8 layers, 5 at 28 for a family the paper did not run at 28). A part too shallow
    for section 2.2's four groups (under 5 layers) has its last layer as the final one."""
    try:
        return plan_groups("attention", depth, "auto", family).groups[FINAL]
    except GroupError:
        return final_group(depth, 1) if depth >= 1 else ()


def paper_groups_fit(depth: int, kind: str = "front") -> bool:
    """Whether a part of this depth holds the paper's literal groups of section 2.2 ("attention") or
    Appendix E ("front"), disjoint from the final three: at least 16 layers. Below, only scaled groups
    exist, and a question about those particular layers cannot be posed."""
    try:
        plan_groups(kind, depth, "paper")
    except GroupError:
        return False
    return True


def final_count(depth: int, family: str | None = None) -> int:
    """How many layers `final_layers` holds."""
    return len(final_layers(depth, family))


def late_boundary(depth: int) -> int:
    """The first "late" layer of section 2.1 (the similarity drop): the paper's boundary after its 10th of
    18 layers (layers 0-9 early, 10-17 late, 0-based), scaled to the depth, leaving at least one layer on
    each side."""
    return max(1, min(depth - 1, _round(10 * depth / PAPER_DEPTH)))


def most(count: int, total: int) -> bool:
    """ "Most layers": more than half of them."""
    return count > total / 2
