"""The patching engine: exact, local, causal, batch-invariant, and in agreement with nnsight."""

from __future__ import annotations

import pytest
import torch

from vlmlib.data import load_samples
from vlmlib.groups import GroupError, front_groups, layer_groups, scale_group
from vlmlib.models import load_model
from vlmlib.patching import (
    Patch,
    PatchConfigError,
    attention_patches,
    front_patches,
    patch_experiment,
    run_clean,
    run_patched,
    validate,
)
from vlmlib.report import paper_values

FAMILIES = ["paligemma-random", "qwen2vl-random"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a shared CPU more threads only oversubscribe it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request):
    return load_model(request.param, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def samples():
    return load_samples("shapes", 3, seed=0)


@pytest.fixture(scope="module")
def inputs(lm, samples):
    return lm.encode_samples(samples)


def sources_of(patches):
    return [s for p in patches for _, s in p.pairs]


# ---------------------------------------------------------------- exactness


def test_self_patch_reproduces_clean_logits_exactly(lm, inputs):
    patches = validate(lm, [
        Patch("attn", (1, 2, 3), (1, 2, 3), "all"),
        Patch("resid", (4,), (4,), "all"),
        Patch("resid", (0, 5), (0, 5), "text"),
        Patch("vision", (0, 3), (0, 3)),
    ])
    clean = run_clean(lm, inputs, sources_of(patches))
    for p in patches:  # one at a time
        logits, _ = run_patched(lm, inputs, [p], clean)
        assert torch.equal(logits[0], clean.logits), p.name
    # All in one pass: a batch of another size may sum in another order on CPU, so to float tolerance.
    logits, _ = run_patched(lm, inputs, patches, clean)
    for k, p in enumerate(patches):
        torch.testing.assert_close(logits[k], clean.logits, rtol=1e-5, atol=1e-5, msg=p.name)


def test_positions_outside_the_set_are_untouched(lm, inputs):
    patches = validate(lm, [Patch("resid", (1,), (5,), "vision"), Patch("attn", (2,), (6,), "text")])
    clean = run_clean(lm, inputs, ["resid.1", "resid.5", "attn.2", "attn.6"])
    _, rec = run_patched(lm, inputs, patches, clean, record=["resid.5", "attn.6"])
    checks = [(0, "resid.5", "resid.1", clean.masks["vision"]), (1, "attn.6", "attn.2", clean.masks["text"])]
    for k, target, source, inside in checks:
        got = rec[target][k]
        assert torch.equal(got[inside], clean.activations[source][inside])  # written inside the set
        assert torch.equal(got[~inside], clean.activations[target][~inside])  # clean outside it
        assert not torch.equal(clean.activations[source][inside], clean.activations[target][inside])


def test_patch_at_layer_k_leaves_earlier_layers_unchanged(lm, inputs):
    k = 4
    early = [f"{kind}.{layer}" for layer in range(k) for kind in ("resid", "attn")]
    vision = [f"vision.{layer}" for layer in range(lm.num_vision_layers)]
    patches = validate(lm, [Patch("resid", (1,), (k,), "all"), Patch("vision", (0,), (2,))])
    clean = run_clean(lm, inputs, ["resid.1", "vision.0", f"resid.{k}", *early, *vision])
    _, rec = run_patched(lm, inputs, patches, clean, record=[*early, *vision, f"resid.{k}"])
    for name in early + vision:  # decoder patch: nothing before layer k, nor the vision tower, moves
        assert torch.equal(rec[name][0].reshape(clean.activations[name].shape), clean.activations[name]), name
    assert not torch.equal(rec[f"resid.{k}"][0], clean.activations[f"resid.{k}"])
    for name in vision[:2]:  # vision patch at tower layer 2: tower layers 0, 1 unchanged
        assert torch.equal(rec[name][1].reshape(clean.activations[name].shape), clean.activations[name]), name
    assert not torch.equal(rec["vision.2"][1].reshape(clean.activations["vision.2"].shape),
                           clean.activations["vision.2"])


def test_batched_configurations_equal_one_at_a_time(lm, samples, inputs):
    patches = validate(lm, [
        Patch("attn", (1, 2), (5, 6), "vision"),
        Patch("attn", (1, 2), (5, 6), "text"),
        Patch("resid", (2, 3), (6, 7), "text"),
        Patch("resid", (1,), (6,), "all"),
        Patch("vision", (0, 1), (2, 3)),
        Patch("vision", (1,), (3,)),
    ])
    clean = run_clean(lm, inputs, sources_of(patches))
    batched, _ = run_patched(lm, inputs, patches, clean)
    for k, p in enumerate(patches):
        single, _ = run_patched(lm, inputs, [p], clean)
        torch.testing.assert_close(batched[k], single[0], rtol=1e-5, atol=1e-5)
        assert not torch.equal(single[0], clean.logits), f"{p.name} changed nothing"
    # the experiment driver: patches stacked or one per pass, samples in one batch or one per batch
    a = patch_experiment(lm, samples, patches, batch_size=3, max_rows=100)
    b = patch_experiment(lm, samples, patches, batch_size=2, max_rows=1)
    for x, y in [(a.patched_logit, b.patched_logit), (a.patched_loss, b.patched_loss), (a.clean_logit, b.clean_logit)]:
        torch.testing.assert_close(torch.as_tensor(x), torch.as_tensor(y), rtol=1e-5, atol=1e-5)


def test_agrees_with_nnsight(lm, inputs):
    nnsight = pytest.importorskip("nnsight")
    net = nnsight.NNsight(lm.model)
    layers = net.model.language_model.layers
    vision, text = lm.vision_mask(inputs), lm.text_mask(inputs)
    with torch.no_grad():
        with net.trace(**inputs, use_cache=False):
            attn1 = layers[1].self_attn.output[0].save()
            resid2 = layers[2].output.save()
        with net.trace(**inputs, use_cache=False):
            layers[5].self_attn.output[0][vision] = attn1[vision]
            logits_attn = net.output.logits.save()
        with net.trace(**inputs, use_cache=False):
            layers[6].output[text] = resid2[text]
            logits_resid = net.output.logits.save()
    patches = validate(lm, [Patch("attn", (1,), (5,), "vision"), Patch("resid", (2,), (6,), "text")])
    clean = run_clean(lm, inputs, ["attn.1", "resid.2"])
    ours, _ = run_patched(lm, inputs, patches, clean)
    rows, last = torch.arange(len(vision)), lm.last_index(inputs)
    torch.testing.assert_close(ours[0], logits_attn[rows, last].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], logits_resid[rows, last].float(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- measures


def test_measures_and_targets(lm, samples):
    patches = [Patch("resid", (1,), (lm.num_layers - 1,), "text", "x")]
    res = patch_experiment(lm, samples, patches, target="top1")
    assert res.target == "top1" and res.clean_correct.all()
    row = res.rows()[0]
    assert row["clean_acc"] == 1.0 and row["n"] == len(samples)
    assert abs(row["delta"] - (row["patched"] - row["clean"])) < 1e-5
    assert row["clean_loss"] > 0 and row["delta_se"] >= 0
    res = patch_experiment(lm, samples, patches, target="auto")
    assert res.target == "answer"
    ids = torch.tensor([lm.token_id(s.answer) for s in samples])
    clean = run_clean(lm, lm.encode_samples(samples)).logits
    torch.testing.assert_close(torch.as_tensor(res.clean_logit), clean[torch.arange(len(ids)), ids])
    torch.testing.assert_close(torch.as_tensor(res.clean_loss), torch.nn.functional.cross_entropy(
        clean, ids, reduction="none"), rtol=1e-5, atol=1e-5)
    assert res.clean_correct.tolist() == (clean.argmax(-1) == ids).tolist()


# ---------------------------------------------------------------- validation before any forward pass


@pytest.fixture
def no_forward(lm, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a forward pass ran before the patches were validated")

    monkeypatch.setattr(lm.model, "forward", fail)
    return lm


@pytest.mark.parametrize("patch, message", [
    (Patch("attn", (1, 2), (99, 100)), "outside the decoder"),
    (Patch("resid", (-1,), (3,)), "outside the decoder"),
    (Patch("vision", (0,), (50,)), "outside the vision tower"),
    (Patch("attn", (), ()), "empty"),
    (Patch("attn", (1, 2, 3), (5, 6)), "equal length"),
    (Patch("attn", (1, 1), (5, 6)), "repeats"),
    (Patch("resid", (1,), (5,), "image"), "position set"),
    (Patch("vision", (0,), (1,), "text"), "no text positions"),
    (Patch("mlp", (0,), (1,)), "cannot patch"),
])
def test_invalid_patches_raise_before_any_forward(no_forward, samples, patch, message):
    good = Patch("attn", (0,), (1,))
    with pytest.raises(PatchConfigError, match=message):
        patch_experiment(no_forward, samples, [good, patch])


def test_groups():
    assert layer_groups(18) == {"early": (2, 3, 4), "mid": (5, 6, 7), "late": (10, 11, 12), "final": (15, 16, 17)}
    assert layer_groups(18, "paper") == layer_groups(18)
    assert front_groups(18)["7-9"] == (7, 8, 9)
    assert front_groups(28, "paper") == {"2-4": (2, 3, 4), "5-7": (5, 6, 7), "7-9": (7, 8, 9),
                                         "10-12": (10, 11, 12), "final": (25, 26, 27)}
    for depth in (4, 8, 27, 28, 32):
        groups = layer_groups(depth)
        sizes = {len(g) for g in groups.values()}
        assert len(sizes) == 1 and all(0 <= x < depth for g in groups.values() for x in g)
        assert groups["final"][-1] == depth - 1
    assert scale_group((2, 3, 4), 36) == (4, 5, 6, 7, 8, 9)
    with pytest.raises(GroupError, match="outside"):
        layer_groups(8, "paper")
    with pytest.raises(GroupError, match="empty"):
        layer_groups(8, {"early": []})
    with pytest.raises(GroupError, match="unknown"):
        layer_groups(8, "sideways")
    patches = attention_patches(layer_groups(18), ["early->mid", "Late → Mid"], ["vision"])
    assert [(p.sources, p.targets, p.label) for p in patches] == [((2, 3, 4), (5, 6, 7), "early->mid"),
                                                                  ((10, 11, 12), (5, 6, 7), "late->mid")]
    assert front_patches(front_groups(18), ["2-4"], "resid", "text")[0].targets == (15, 16, 17)
    with pytest.raises(PatchConfigError, match="group"):
        attention_patches(layer_groups(18), ["early->nowhere"])


@pytest.mark.parametrize("name", ["table1_paligemma_attention_patching", "table2_qwen2vl_attention_patching",
                                  "table3_paligemma_front_patching", "table4_qwen2vl_front_patching"])
def test_paper_tables_are_consistent(name):
    table = paper_values(name)
    assert len(table["rows"]) == 8
    for row in table["rows"]:
        assert abs(row["patched"] - row["clean"] - row["delta"]) <= 0.011, row  # the paper rounds to 2 digits
        assert row["kind"] in ("attn", "resid", "vision") and row["positions"] in ("vision", "text", "all")
