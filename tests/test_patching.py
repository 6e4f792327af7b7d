"""The patching engine: exact, local, causal, batch-invariant, and in agreement with nnsight."""

from __future__ import annotations

import pytest
import torch

from vlmlib import (
    Patch,
    Sample,
    attention_patches,
    check_patches,
    front_patches,
    holm,
    load_model,
    load_samples,
    paired_p_value,
    patch_experiment,
    run_clean,
)
from vlmlib.interventions.patching import (
    PatchConfigError,
    answer_set,
    answer_tokens,
    next_answer,
    resolve_conditions,
    run_patched,
    teacher_forced_inputs,
)
from vlmlib.paper.groups import front_groups, layer_groups, plan_groups
from vlmlib.paper.patching import compare_with_paper, comparison_summary, comparison_table
from vlmlib.paper.values import paper_values

FAMILIES = ["paligemma-random", "qwen2vl-random"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models run fastest on one thread


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
    # The engine itself (validation refuses self-patches as no-op rows, so they are built by hand here).
    patches = [
        Patch("attn", (1, 2, 3), (1, 2, 3), "all"),
        Patch("resid", (4,), (4,), "all"),
        Patch("resid", (0, 5), (0, 5), "text"),
        Patch("vision", (0, 3), (0, 3), "all"),
        Patch("vision_attn", (1,), (1,), "all"),
    ]
    with pytest.raises(PatchConfigError, match="both source and target"):
        check_patches(lm, patches[:1])
    clean = run_clean(lm, inputs, sources_of(patches))
    for p in patches:  # one at a time
        logits, _ = run_patched(lm, inputs, [p], clean)
        assert torch.equal(logits[0], clean.logits), p.name
    # All in one pass: a batch of another size may sum in another order on CPU, so to float tolerance.
    logits, _ = run_patched(lm, inputs, patches, clean)
    for k, p in enumerate(patches):
        torch.testing.assert_close(logits[k], clean.logits, rtol=1e-5, atol=1e-5, msg=p.name)


def test_positions_outside_the_set_are_untouched(lm, inputs):
    patches = check_patches(lm, [Patch("resid", (1,), (5,), "vision"), Patch("attn", (2,), (6,), "text")])
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
    patches = check_patches(lm, [Patch("resid", (1,), (k,), "all"), Patch("vision", (0,), (2,))])
    clean = run_clean(lm, inputs, ["resid.1", "vision.0", f"resid.{k}", *early, *vision])
    _, rec = run_patched(lm, inputs, patches, clean, record=[*early, *vision, f"resid.{k}"])
    for name in early + vision:  # decoder patch: nothing before layer k, nor the vision tower, moves
        assert torch.equal(rec[name][0].reshape(clean.activations[name].shape), clean.activations[name]), name
    assert not torch.equal(rec[f"resid.{k}"][0], clean.activations[f"resid.{k}"])
    for name in vision[:2]:  # vision patch at tower layer 2: tower layers 0, 1 unchanged
        assert torch.equal(rec[name][1].reshape(clean.activations[name].shape), clean.activations[name]), name
    assert not torch.equal(
        rec["vision.2"][1].reshape(clean.activations["vision.2"].shape), clean.activations["vision.2"]
    )


def test_batched_configurations_equal_one_at_a_time(lm, samples, inputs):
    patches = check_patches(
        lm,
        [
            Patch("attn", (1, 2), (5, 6), "vision"),
            Patch("attn", (1, 2), (5, 6), "text"),
            Patch("resid", (2, 3), (6, 7), "text"),
            Patch("resid", (1,), (6,), "all"),
            Patch("vision", (0, 1), (2, 3)),
            Patch("vision", (1,), (3,)),
            Patch("vision_attn", (0,), (2,)),
        ],
    )
    clean = run_clean(lm, inputs, sources_of(patches))
    batched, _ = run_patched(lm, inputs, patches, clean)
    for k, p in enumerate(patches):
        single, _ = run_patched(lm, inputs, [p], clean)
        torch.testing.assert_close(batched[k], single[0], rtol=1e-5, atol=1e-5)
        assert not torch.equal(single[0], clean.logits), f"{p.name} changed nothing"
    # the experiment driver: patches stacked or one per pass, samples in one batch or one per batch
    a = patch_experiment(lm, samples, patches, batch_size=3, max_rows=100)
    b = patch_experiment(lm, samples, patches, batch_size=2, max_rows=1)
    for x, y in [
        (a.patched_logit, b.patched_logit),
        (a.patched_loss, b.patched_loss),
        (a.clean_logit, b.clean_logit),
    ]:
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
    patches = check_patches(lm, [Patch("attn", (1,), (5,), "vision"), Patch("resid", (2,), (6,), "text")])
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
    inputs = lm.encode_samples(samples)
    clean = run_clean(lm, inputs, ["resid.1"]).logits
    # One-token answers: exactly the numbers of one pass over the prompt, read at the final position.
    assert torch.equal(torch.as_tensor(res.clean_logit), clean[torch.arange(len(ids)), ids])
    torch.testing.assert_close(
        torch.as_tensor(res.clean_loss),
        torch.nn.functional.cross_entropy(clean, ids, reduction="none"),
        rtol=1e-5,
        atol=1e-5,
    )
    assert res.clean_correct.tolist() == (clean.argmax(-1) == ids).tolist()
    patched, _ = run_patched(lm, inputs, check_patches(lm, patches), run_clean(lm, inputs, ["resid.1"]))
    assert torch.equal(torch.as_tensor(res.patched_logit[0]), patched[0][torch.arange(len(ids)), ids])
    # the other measures of the same logits
    row = res.rows()[0]
    others = patched[0].scatter(-1, ids.unsqueeze(-1), float("-inf")).amax(-1)
    margin = patched[0][torch.arange(len(ids)), ids] - others
    clean_margin = clean[torch.arange(len(ids)), ids] - clean.scatter(
        -1, ids.unsqueeze(-1), float("-inf")
    ).amax(-1)
    assert row["delta_logit_diff"] == pytest.approx(float((margin - clean_margin).mean()), abs=1e-4)
    assert row["delta_logprob"] == pytest.approx(-row["delta_loss"], abs=1e-6)
    assert row["delta_acc"] == pytest.approx(row["patched_acc"] - row["clean_acc"])
    n, p = row["n"], row["clean_acc"]
    # a proportion's s.e., as the page says
    assert row["clean_acc_se"] == pytest.approx((p * (1 - p) / n) ** 0.5)


# ---------------------------------------------------------------- validation before any forward pass


@pytest.fixture
def no_forward(lm, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a forward pass ran before the patches were validated")

    monkeypatch.setattr(lm.model, "forward", fail)
    return lm


@pytest.mark.parametrize(
    "patch, message",
    [
        (Patch("attn", (1, 2), (99, 100)), "outside the decoder"),
        (Patch("resid", (-1,), (3,)), "outside the decoder"),
        (Patch("vision", (0,), (50,)), "outside the vision tower"),
        (Patch("attn", (), ()), "empty"),
        (Patch("attn", (1, 2, 3), (5, 6)), "equal length"),
        (Patch("attn", (1, 1), (5, 6)), "repeats"),
        (Patch("resid", (1,), (5,), "image"), "position set"),
        (Patch("vision", (0,), (1,), "text"), "no text positions"),
        (Patch("mlp", (0,), (1,)), "cannot patch"),
        (Patch("attn", (1, 2), (1, 2)), "both source and target"),
        (Patch("resid", (1, 2), (2, 3)), "both source and target"),
        (Patch("vision_attn", (0,), (0,)), "both source and target"),
        (Patch("attn", (0,), (1,), "all", "again"), "duplicate"),
    ],
)
def test_invalid_patches_raise_before_any_forward(no_forward, samples, patch, message):
    good = Patch("attn", (0,), (1,))
    with pytest.raises(PatchConfigError, match=message):
        patch_experiment(no_forward, samples, [good, patch])


def test_patches_from_group_plans():
    patches = attention_patches(plan_groups("attention", 18), ["early->mid", "Late → Mid"], ["vision"])
    assert [(p.sources, p.targets, p.label) for p in patches] == [
        ((2, 3, 4), (5, 6, 7), "early->mid"),
        ((10, 11, 12), (5, 6, 7), "late->mid"),
    ]
    assert front_patches(front_groups(18), ["2-4"], "resid", "text")[0].targets == (15, 16, 17)
    with pytest.raises(PatchConfigError, match="group"):
        attention_patches(layer_groups(18), ["early->nowhere"])
    # a source the plan left out on a shallow model is skipped (its reason is in the plan's notes) ...
    shallow = plan_groups("front", 4, "scaled", where="vision tower")
    assert [p.label for p in front_patches(shallow, ["2-4", "5-7", "7-9", "10-12"], "vision")] == [
        "2-4",
        "7-9",
        "10-12",
    ]
    # ... an unknown one is an error
    with pytest.raises(PatchConfigError, match="not among the groups"):
        front_patches(shallow, ["3-5"], "vision")


@pytest.mark.parametrize(
    "name",
    [
        "table1_paligemma_attention_patching",
        "table2_qwen2vl_attention_patching",
        "table3_paligemma_front_patching",
        "table4_qwen2vl_front_patching",
    ],
)
def test_paper_tables_are_consistent(name):
    table = paper_values(name)
    assert len(table["rows"]) == 8
    for row in table["rows"]:
        assert abs(row["patched"] - row["clean"] - row["delta"]) <= 0.011, row  # the paper rounds to 2 digits
        assert row["kind"] in ("attn", "resid", "vision") and row["positions"] in ("vision", "text", "all")


# ---------------------------------------------------------------- conditions, multi-token answers


def test_low_rank_condition_scores_the_next_answer(lm):
    samples = load_samples("shapes", 8, seed=0)
    assert answer_set(samples) == [str(n) for n in range(1, 7)] or answer_set(samples)[0] == "1"
    assert next_answer("3", ["1", "2", "3", "4", "5", "6"]) == "4"
    assert next_answer("6", ["1", "2", "3", "4", "5", "6"]) == "1"  # wraps within the answer set
    assert answer_set([Sample(image=None, answer=a) for a in ("2", "5", "3")]) == ["2", "3", "4", "5"]
    assert answer_set([Sample(image=None, answer=a) for a in ("dog", "cat")]) == ["cat", "dog"]
    with pytest.raises(ValueError, match="two different answers"):
        next_answer("3", ["3"])
    patches = [Patch("resid", (1,), (lm.num_layers - 1,), "text", "x")]
    res = patch_experiment(lm, samples, patches, conditions="auto")
    assert list(res.conditions) == ["answer", "low-rank"] and res.conditions["low-rank"].rule == "next answer"
    answers = res.answers
    wrong = torch.tensor([lm.token_id(next_answer(s.answer, answers)) for s in samples])
    clean = run_clean(lm, lm.encode_samples(samples)).logits
    assert torch.equal(
        torch.as_tensor(res.conditions["low-rank"].clean["logit"]), clean[torch.arange(8), wrong]
    )
    rows = res.rows()
    assert [r["condition"] for r in rows] == ["answer", "low-rank"]
    with pytest.raises(ValueError, match="needs an answer"):
        patch_experiment(lm, [Sample(image=s.image) for s in samples[:2]], patches, conditions=["low-rank"])
    assert resolve_conditions(samples, "answer, low-rank") == ["answer", "low-rank"]
    assert resolve_conditions(samples, ["low-rank"]) == ["low-rank"]
    assert resolve_conditions([Sample(image=None)], "auto") == [
        "answer"
    ]  # no answers: no wrong answer either
    with pytest.raises(ValueError, match="unknown condition"):
        patch_experiment(lm, samples, patches, conditions=["sideways"])


def _hand_patched_logprob(lm, samples, texts, source: int, target: int):
    """Independent of vlmlib.interventions.patching: prompt + answer encoded by the family, resid `source`
    of a clean run written over resid `target` at the prompt's text positions by a hand-made hook, log p
    summed."""
    layers = lm.model.get_submodule(lm.family.decoder_layers)
    prompt = lm.encode_samples(samples)
    full = lm.encode([s.image for s in samples], [s.question for s in samples], texts)
    full.pop("labels")
    n_prompt = prompt["attention_mask"].sum(1)
    seq = torch.arange(full["input_ids"].shape[1])
    where = lm.text_mask(full) & (seq[None] < n_prompt[:, None])
    saved = {}
    handle = layers[source].register_forward_hook(
        lambda m, a, out: saved.update(h=out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        clean_logits = lm.model(**full, use_cache=False).logits.float()
    handle.remove()

    def write(module, args, out):
        hidden = out[0] if isinstance(out, tuple) else out
        hidden = torch.where(where.unsqueeze(-1), saved["h"], hidden)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    handle = layers[target].register_forward_hook(write)
    with torch.no_grad():
        patched_logits = lm.model(**full, use_cache=False).logits.float()
    handle.remove()
    result = []
    for logits in (clean_logits, patched_logits):
        logp = logits.log_softmax(-1)
        result.append(
            [
                sum(
                    float(logp[i, int(n_prompt[i]) - 1 + j, tok])
                    for j, tok in enumerate(lm.processor.tokenizer.encode(t, add_special_tokens=False))
                )
                for i, t in enumerate(texts)
            ]
        )
    return result


def test_multi_token_answers_are_scored_by_their_full_log_probability(lm):
    base = load_samples("shapes", 3, seed=1)
    samples = [Sample(image=s.image, question=s.question, answer=s.caption) for s in base]
    lengths = [len(answer_tokens(lm, s.answer)) for s in samples]
    assert max(lengths) > 1 and len(set(lengths)) > 1  # several tokens, of different lengths (padding)
    patch = Patch("resid", (1,), (5,), "text", "x")
    res = patch_experiment(lm, samples, [patch], conditions=["answer"], batch_size=3)
    m = res.conditions["answer"]
    assert m.answer_tokens.tolist() == lengths and res.rows()[0]["answer_tokens"] == max(lengths)
    clean, patched = _hand_patched_logprob(lm, samples, [s.answer for s in samples], 1, 5)
    torch.testing.assert_close(torch.as_tensor(m.clean["logprob"]), torch.tensor(clean), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        torch.as_tensor(m.patched["logprob"][0]), torch.tensor(patched), rtol=1e-4, atol=1e-4
    )
    # stacked with another patch and in batches of one: the same numbers
    other = Patch("attn", (0,), (6,), "vision", "y")
    res2 = patch_experiment(lm, samples, [other, patch], conditions=["answer"], batch_size=1)
    torch.testing.assert_close(
        torch.as_tensor(res2.conditions["answer"].patched["logprob"][1]),
        torch.as_tensor(m.patched["logprob"][0]),
        rtol=1e-4,
        atol=1e-4,
    )


def test_answer_tokens_are_never_patched(lm):
    samples = [
        Sample(image=s.image, question=s.question, answer=s.caption)
        for s in load_samples("shapes", 2, seed=1)
    ]
    tokens = [answer_tokens(lm, s.answer) for s in samples]
    prompt = lm.encode_samples(samples)
    big, read_at, prompt_mask = teacher_forced_inputs(
        lm, samples, prompt, [s.answer for s in samples], tokens
    )
    clean = run_clean(lm, big, ["resid.1", "resid.5"], read_at=read_at, prompt_mask=prompt_mask)
    (patch,) = check_patches(lm, [Patch("resid", (1,), (5,), "all")])
    _, rec = run_patched(lm, big, [patch], clean, record=["resid.5"])
    answer = big["attention_mask"].bool() & ~prompt_mask
    assert answer.any()
    got = rec["resid.5"][0]
    assert torch.equal(got[prompt_mask], clean.activations["resid.1"][prompt_mask])
    assert not torch.equal(got[answer], clean.activations["resid.1"][answer])  # computed, not written
    for i, toks in enumerate(tokens):
        n = int(prompt["attention_mask"][i].sum())
        assert big["input_ids"][i, n : n + len(toks)].tolist() == toks
        assert read_at[i, : len(toks)].tolist() == list(range(n - 1, n - 1 + len(toks)))


# ---------------------------------------------------------------- comparison with the paper


def _row(label, delta_logprob, se, n=16, noop=False, condition="answer"):
    return {
        "label": label,
        "kind": "attn",
        "positions": "text",
        "n": n,
        "condition": condition,
        "noop": noop,
        "delta_logprob": delta_logprob,
        "delta_logprob_se": se,
        "delta": delta_logprob,
        "delta_se": se,
    }


def test_compare_with_paper_holm_and_no_ops():
    paper = {
        "rows": [
            {
                "kind": "attn",
                "positions": "text",
                "patch": p,
                "delta": 1.0,
                "clean_loss": 15.0,
                "patched_loss": 14.0,
            }
            for p in ("a", "b", "c", "d")
        ]
    }
    rows = [
        _row("a", 1.0, 0.1),
        _row("b", -1.0, 0.1),
        _row("c", 0.3, 0.13),
        _row("d", 0.0, 0.0, noop=True),
        _row("zz", 5.0, 0.1),
    ]  # no paper counterpart
    comparison = compare_with_paper(rows, paper)
    assert [c["patch"] for c in comparison] == ["a", "b", "c", "d"]
    by = {c["patch"]: c for c in comparison}
    assert by["a"]["paper_delta"] == pytest.approx(1.0)  # Δ log p = clean loss - patched loss
    assert by["a"]["counted"] and by["a"]["same_sign"] is True
    assert by["b"]["counted"] and by["b"]["same_sign"] is False
    # c: p = 0.036 on its own, but not after Holm's correction (third smallest of 4: times 2)
    assert by["c"]["p_value"] < 0.05 and by["c"]["p_adjusted"] >= 0.05 and not by["c"]["counted"]
    assert by["d"]["counted"] is False and by["d"]["same_sign"] is None  # a no-op never counts
    assert all(c["correction"] == "holm" and c["measure"] == "delta_logprob" for c in comparison)
    summary = comparison_summary(comparison)["answer"]
    assert summary == {
        "rows": 4,
        "counted": 2,
        "same_sign": 1,
        "agree": ["attention, text positions a"],
        "disagree": ["attention, text positions b"],
    }
    with pytest.raises(ValueError, match="reports no"):
        compare_with_paper(rows, paper, measure="delta_acc")


def test_a_resolved_but_tiny_shift_is_not_compared_by_sign():
    # a saturated answer moved by 0.00002 nats with a still smaller s.e.: resolved, yet its sign says nothing
    paper = {
        "rows": [
            {
                "kind": "attn",
                "positions": "text",
                "patch": p,
                "delta": 1.0,
                "clean_loss": 15.0,
                "patched_loss": 14.0,
            }
            for p in ("tiny", "real")
        ]
    }
    comparison = compare_with_paper([_row("tiny", -2e-5, 1e-7), _row("real", 0.5, 0.05)], paper)
    by = {c["patch"]: c for c in comparison}
    assert by["tiny"]["resolved"] and by["tiny"]["tiny"]
    assert not by["tiny"]["counted"] and by["tiny"]["same_sign"] is None
    assert by["real"]["counted"] and by["real"]["same_sign"] is True and not by["real"]["tiny"]
    assert "too small to compare" in comparison_table(comparison, "answer")


def test_noop_rows_are_flagged(lm):
    # attention at the vision positions of the last layer reaches no later position: no effect at all
    last = lm.num_layers - 1
    res = patch_experiment(
        lm,
        load_samples("shapes", 2),
        [Patch("attn", (0,), (last,), "vision", "late"), Patch("attn", (0,), (last,), "text", "late")],
    )
    noop = [r["noop"] for r in res.rows()]
    assert noop == [True, False]


def test_holm():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan")]) == [1.0, 1.0]
    assert paired_p_value(0.0, 0.0, 10) == 1.0 and paired_p_value(1.0, 0.0, 10) == 0.0
    assert paired_p_value(1.0, float("nan"), 1) == 1.0
    assert paired_p_value(2.0, 1.0, 1000) == pytest.approx(0.0458, abs=1e-3)


def test_digit_split_answers_on_a_real_structure_standin(tmp_path):
    """Qwen2-VL's tokenizer writes "10" as "1", "0": the whole answer is scored, with the real chat
    template."""
    from vlmlib.organisms.builders import save_standin

    lm = load_model(str(save_standin("qwen2vl-2b", tmp_path / "qwen")), device="cpu", dtype="float32")
    base = load_samples("shapes", 3, seed=2)
    samples = [Sample(image=s.image, question=s.question, answer=a) for s, a in zip(base, ["10", "3", "12"])]
    assert [len(answer_tokens(lm, s.answer)) for s in samples] == [2, 1, 2]
    patch = Patch("resid", (0,), (lm.num_layers - 1,), "text", "x")
    res = patch_experiment(lm, samples, [patch], conditions="auto")
    assert res.answers == [
        str(n) for n in range(3, 13)
    ]  # counts: every integer between the smallest and largest
    m = res.conditions["answer"]
    clean, patched = _hand_patched_logprob(lm, samples, ["10", "3", "12"], 0, lm.num_layers - 1)
    torch.testing.assert_close(torch.as_tensor(m.clean["logprob"]), torch.tensor(clean), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        torch.as_tensor(m.patched["logprob"][0]), torch.tensor(patched), rtol=1e-4, atol=1e-4
    )
    low = res.conditions["low-rank"]
    clean, _ = _hand_patched_logprob(lm, samples, ["11", "4", "3"], 0, lm.num_layers - 1)  # 12 wraps to 3
    torch.testing.assert_close(
        torch.as_tensor(low.clean["logprob"]), torch.tensor(clean), rtol=1e-4, atol=1e-4
    )


def test_a_minimal_effect_of_the_paper_is_compared_as_small_not_by_sign():
    """Table 1 calls vision early->mid a minimal effect: a near-zero shift of either sign agrees, a large
    resolved shift disagrees, a noisy one is not counted (issue 23: signs of noise are never compared)."""
    from vlmlib.paper.patching import compare_with_paper
    from vlmlib.paper.values import paper_values

    paper = paper_values("table1_paligemma_attention_patching")

    def row(value, se):
        return {
            "kind": "attn",
            "positions": "vision",
            "label": "early->mid",
            "condition": "answer",
            "n": 200,
            "delta_logprob": value,
            "delta_logprob_se": se,
        }

    (small,) = compare_with_paper([row(-0.004, 0.001)], paper)
    (large,) = compare_with_paper([row(2.82, 0.11)], paper)
    (noisy,) = compare_with_paper([row(0.08, 0.05)], paper)
    assert (small["compared"], small["counted"], small["same_sign"]) == ("small", True, True)
    assert (large["counted"], large["same_sign"]) == (True, False)
    assert (noisy["counted"], noisy["same_sign"]) == (False, None)
    text = {**row(0.5, 0.01), "positions": "text"}  # an effect in the paper: compared by sign
    (effect,) = compare_with_paper([text], paper)
    assert effect["compared"] == "sign" and effect["same_sign"] is True
