"""Lean patched runs (blocks before the first target skipped, resumed from the clean run) give the
full patched run's logits, and really skip."""

import pytest
import torch

from vlmlib import Patch, check_patches, load_model, run_clean, shapes_samples
from vlmlib.interventions.patching import patch_resume_sites, patch_skip_plan, run_patched

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stacks(lm):
    L, V = lm.num_layers, lm.num_vision_layers
    decoder = [
        Patch("attn", (0,), (L - 2,), "vision"),
        Patch("resid", (1,), (L - 1,), "text"),
        Patch("resid", (0, 1), (2, 3), "all"),
    ]
    tower = [Patch("vision", (0,), (V - 1,)), Patch("vision_attn", (0,), (V - 2,))]
    return {
        "decoder": check_patches(lm, decoder),
        "tower": check_patches(lm, tower),
        "mixed": check_patches(lm, decoder[:1] + tower[:1]),
    }


@pytest.mark.parametrize("model", ["paligemma-random", "qwen2vl-random"])
def test_lean_equals_full(model):
    lm = load_model(model, device="cpu", dtype="float32")
    inputs = lm.encode_samples(shapes_samples(3, seed=2))
    for name, patches in stacks(lm).items():
        sources = list(dict.fromkeys(s for p in patches for _, s in p.pairs)) + patch_resume_sites(
            lm, patches
        )
        clean = run_clean(lm, inputs, sources)
        assert patch_skip_plan(lm, patches, clean), f"{name}: nothing would be skipped"
        full, _ = run_patched(lm, inputs, patches, clean, lean=False)
        first_attn = lm.family.site_module(lm.model, "attn_weights", 0)
        calls = []
        handle = first_attn.register_forward_hook(lambda *a: calls.append(1))
        try:
            lean, _ = run_patched(lm, inputs, patches, clean, lean=True)
        finally:
            handle.remove()
        torch.testing.assert_close(lean, full, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
        assert bool(calls) == (name != "decoder"), f"{name}: decoder layer 0 ran {len(calls)} times"
        # the model is left as it was: no instance forward remains on any block
        assert not any("forward" in m.__dict__ for m in lm.model.modules())


def test_without_resume_states_runs_everything():
    lm = load_model("paligemma-random", device="cpu", dtype="float32")
    inputs = lm.encode_samples(shapes_samples(2, seed=2))
    patches = check_patches(lm, [Patch("attn", (0,), (lm.num_layers - 1,), "text")])
    clean = run_clean(lm, inputs, ["attn.0"])  # no resume states recorded
    assert patch_skip_plan(lm, patches, clean) == []


def test_token_budget_stacks_fewer_copies_with_the_same_numbers(monkeypatch):
    """A tight token budget runs one configuration per pass; the measures do not change."""
    from vlmlib.data import shapes_samples
    from vlmlib.interventions import patching
    from vlmlib.models import load_model

    lm = load_model("paligemma-random", device="cpu", dtype="float32")
    samples = shapes_samples(4, seed=5)
    patches = patching.attention_patches({"a": (0,), "b": (1,)}, ["a->b", "b->a"], ["text", "vision"])
    stacked = []
    real = patching.run_patched
    monkeypatch.setattr(
        patching,
        "run_patched",
        lambda lm_, inputs, ps, *a, **k: (stacked.append(len(ps)), real(lm_, inputs, ps, *a, **k))[1],
    )
    wide = patching.patch_experiment(lm, samples, patches, batch_size=4, max_tokens_per_pass=None).rows()
    assert max(stacked) > 1
    stacked.clear()
    tight = patching.patch_experiment(lm, samples, patches, batch_size=4, max_tokens_per_pass=1).rows()
    assert set(stacked) == {1}
    for w, t in zip(wide, tight):
        assert abs(w["delta_logprob"] - t["delta_logprob"]) < 1e-4


def test_positions_computed_once_and_tiled_are_what_the_model_computes():
    """Qwen2-VL's multimodal rotary positions, computed once for a batch and tiled for its repeated
    copies (`with_positions`), are exactly those the model derives from the repeated batch itself: the
    same logits bit for bit. Rows with different image sizes, so that their positions differ."""
    import dataclasses

    from vlmlib.interventions.resume import final_logits, repeat_inputs, with_positions

    lm = load_model("qwen2vl-random", device="cpu", dtype="float32")
    samples = shapes_samples(3, seed=2)
    samples[1] = dataclasses.replace(samples[1], image=samples[1].image.resize((112, 84)))
    inputs = lm.encode_samples(samples)
    positioned = with_positions(lm, inputs)
    assert positioned["position_ids"].shape == (3, *inputs["input_ids"].shape)
    assert not torch.equal(positioned["position_ids"][:, 0], positioned["position_ids"][:, 1])
    own, tiled = repeat_inputs(inputs, 4), repeat_inputs(positioned, 4)
    assert torch.equal(tiled["position_ids"], lm.family.position_ids(lm.model, own))
    assert torch.equal(final_logits(lm, tiled), final_logits(lm, own))

    pali = load_model("paligemma-random", device="cpu", dtype="float32")
    pali_inputs = pali.encode_samples(samples[:2])
    assert with_positions(pali, pali_inputs) is pali_inputs  # plain counting: the forward's own
