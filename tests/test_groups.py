"""Layer groups: the paper's at its depths, disjoint and ordered at every other depth, or a clear refusal."""

from __future__ import annotations

import pytest

from vlmlib.paper.groups import (
    DECODER,
    FINAL,
    VISION_TOWER,
    GroupError,
    check_pair,
    front_groups,
    layer_groups,
    paper_depth,
    plan_groups,
    resolve_mode,
)

PAPER_ATTENTION_18 = {"early": (2, 3, 4), "mid": (5, 6, 7), "late": (10, 11, 12), "final": (15, 16, 17)}
PAPER_FRONT_18 = {
    "2-4": (2, 3, 4),
    "5-7": (5, 6, 7),
    "7-9": (7, 8, 9),
    "10-12": (10, 11, 12),
    "final": (15, 16, 17),
}


def test_the_papers_groups_at_18_layers():
    for mode in ("scaled", "paper", "auto"):
        assert layer_groups(18, mode) == PAPER_ATTENTION_18
        assert front_groups(18, mode) == PAPER_FRONT_18
    assert plan_groups("attention", 18, "auto", "paligemma").mode == "paper"


@pytest.mark.parametrize(
    "family, where, depth, final",
    [
        ("paligemma", DECODER, 18, (15, 16, 17)),
        ("paligemma", VISION_TOWER, 27, (24, 25, 26)),
        ("qwen2vl", DECODER, 28, (25, 26, 27)),
        ("qwen2vl", VISION_TOWER, 32, (29, 30, 31)),
    ],
)
def test_auto_is_the_papers_literal_indices_on_the_papers_models(family, where, depth, final):
    assert paper_depth(family, where) == depth
    attention = plan_groups("attention", depth, "auto", family, where)
    front = plan_groups("front", depth, "auto", family, where)
    assert attention.mode == front.mode == "paper"
    assert attention.groups == {**{k: v for k, v in PAPER_ATTENTION_18.items() if k != FINAL}, FINAL: final}
    assert front.groups == {**{k: v for k, v in PAPER_FRONT_18.items() if k != FINAL}, FINAL: final}
    assert "the paper's layer indices" in front.describe()
    # scaled groups on the same model are an explicit choice, labelled as such
    scaled = plan_groups("attention", depth, "scaled", family, where)
    assert scaled.mode == "scaled" and "scaled" in scaled.describe()
    if depth != 18:
        assert scaled.groups != attention.groups


def test_auto_is_scaled_elsewhere():
    assert resolve_mode("auto", 8, "paligemma", DECODER) == "scaled"  # the organisms
    assert resolve_mode("auto", 28, "paligemma", DECODER) == "scaled"  # another family's depth
    assert resolve_mode("auto", 27, "qwen2vl", VISION_TOWER) == "scaled"
    assert resolve_mode("auto", 28, None, DECODER) == "scaled"  # family unknown
    assert plan_groups("attention", 28, "auto", "qwen2vl", VISION_TOWER).mode == "scaled"


def assert_attention_rules(groups: dict, depth: int):
    names = list(groups)
    assert names == ["early", "mid", "late", "final"]
    assert len({len(g) for g in groups.values()}) == 1  # paired layer by layer
    for g in groups.values():
        assert g and all(0 <= x < depth for x in g) and list(g) == sorted(set(g))
    for a, b in zip(names, names[1:]):
        assert max(groups[a]) < min(groups[b]), (
            f"{a} {groups[a]} and {b} {groups[b]} overlap or are out of order"
        )
    assert groups["final"][-1] == depth - 1


def assert_front_rules(groups: dict, depth: int):
    sources = [n for n in groups if n != FINAL]
    assert list(groups)[-1] == FINAL and len(sources) >= 3
    assert len({len(g) for g in groups.values()}) == 1
    for g in groups.values():
        assert g and all(0 <= x < depth for x in g) and list(g) == sorted(set(g))
    for name in sources:
        assert not set(groups[name]) & set(groups[FINAL]), f"source {name} overlaps its target"
    starts = [groups[n][0] for n in sources]
    assert starts == sorted(set(starts)), "two sources collapse onto the same layers, or are out of order"
    assert groups[FINAL][-1] == depth - 1


@pytest.mark.parametrize("where", [DECODER, VISION_TOWER])
@pytest.mark.parametrize("depth", range(2, 49))
def test_scaled_groups_at_every_depth(depth, where):
    for family in (None, "paligemma", "qwen2vl"):
        for kind, check, minimum in (
            ("attention", assert_attention_rules, 4),
            ("front", assert_front_rules, 4),
        ):
            if depth < minimum:
                with pytest.raises(GroupError, match=f"needs at least {minimum} layers"):
                    plan_groups(kind, depth, "auto", family, where)
                continue
            plan = plan_groups(kind, depth, "auto", family, where)
            check(plan.groups, depth)
            assert plan.where == where and plan.depth == depth
            # the plan's groups always make valid, non-self patches
            for name in plan.sources:
                check_pair(plan[name], plan[FINAL], depth)


def test_shallow_front_groups_drop_the_table_only_source_and_say_so():
    plan = plan_groups("front", 4, "scaled", where=VISION_TOWER)  # the organisms' vision tower
    assert plan.groups == {"2-4": (0,), "7-9": (1,), "10-12": (2,), "final": (3,)}
    assert plan.dropped == ("5-7",) and "5-7" in plan.describe()
    assert plan_groups("front", 5, "scaled").dropped == ()


def test_front_sources_may_share_layers_as_the_papers_do():
    assert set(front_groups(18)["5-7"]) & set(front_groups(18)["7-9"]) == {7}
    groups = front_groups(8, "scaled")
    assert groups == {"2-4": (1, 2), "5-7": (2, 3), "7-9": (3, 4), "10-12": (4, 5), "final": (6, 7)}


def test_paper_mode_refuses_too_shallow_a_model():
    with pytest.raises(GroupError, match="do not fit a 8-layer decoder.*scaled"):
        layer_groups(8, "paper")
    with pytest.raises(GroupError, match="overlap"):
        layer_groups(15, "paper")  # final 12-14 would overlap late 10-12
    assert layer_groups(16, "paper")["final"] == (13, 14, 15)


@pytest.mark.parametrize(
    "groups, message",
    [
        ({"early": []}, "empty"),
        ({"early": [0, 1], "mid": [1, 2], "late": [4, 5], "final": [6, 7]}, "overlap"),
        ({"early": [4, 5], "mid": [0, 1], "late": [2, 3], "final": [6, 7]}, "out of order"),
        ({"early": [0, 1], "mid": [2], "late": [4, 5], "final": [6, 7]}, "differ in size"),
        ({"early": [0, 9], "final": [6, 7]}, "outside"),
        ({"early": [1, 1], "final": [6, 7]}, "repeats"),
        ({"early": "0-1", "final": [6, 7]}, "list of layer indices"),
    ],
)
def test_explicit_attention_groups_are_checked(groups, message):
    with pytest.raises(GroupError, match=message):
        plan_groups("attention", 8, groups)


def test_explicit_groups():
    plan = plan_groups("attention", 8, {"early": [1], "late": [4]})
    assert plan.mode == "explicit" and plan.groups == {"early": (1,), "late": (4,), "final": (7,)}
    with pytest.raises(GroupError, match="same layers"):
        plan_groups("front", 8, {"a": [1, 2], "b": [1, 2], "final": [6, 7]})
    with pytest.raises(GroupError, match="both source and target"):
        plan_groups("front", 8, {"a": [5, 6], "final": [6, 7]})
    assert plan_groups("front", 8, {"a": [1, 2], "b": [2, 3], "final": [6, 7]}).groups["b"] == (2, 3)


def test_bad_arguments():
    with pytest.raises(GroupError, match="unknown layer-group mode"):
        layer_groups(8, "sideways")
    with pytest.raises(GroupError, match="unknown group kind"):
        plan_groups("sideways", 8)
    with pytest.raises(GroupError, match="positive number of layers"):
        plan_groups("attention", 0)


def test_a_pair_that_shares_a_layer_is_refused():
    with pytest.raises(GroupError, match="both source and target"):
        check_pair((1, 2, 3), (1, 2, 3), 8)
    with pytest.raises(GroupError, match=r"layers \[3\] are both"):
        check_pair((2, 3), (3, 4), 8)
    assert check_pair((0, 1), (6, 7), 8) == ((0, 1), (6, 7))
