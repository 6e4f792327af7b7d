"""The families beyond PaliGemma and Qwen2-VL (issue 25), each on a tiny random model built offline
(`<family>-random`, vlmlib/organisms/family_models.py): found from its config, prompted as its checkpoint's
chat template prompts it (the paper's bare prompt as an option), every decoder and vision-tower site
readable, the residual identity, an identity patch that changes nothing, attention masses under SDPA equal
to eager attention's, vision-tower readings of split images mapped back to their samples, and the book's
chapters through the runner. book/families.md names the test behind each of its cells."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmlib import (
    Patch,
    PromptOptions,
    Trace,
    family_for_config,
    load_model,
    observe,
    run_clean,
    shapes_samples,
)
from vlmlib.families import family_named
from vlmlib.interventions.patching import (
    PatchConfigError,
    check_patches,
    patch_resume_sites,
    patch_skip_plan,
    run_patched,
    teacher_forced_inputs,
)
from vlmlib.interventions.resume import with_positions
from vlmlib.observation import observe_batch
from vlmlib.organisms.family_models import FAMILY_STANDIN_NAMES

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["llava", "qwen25vl", "qwen3vl", "gemma3", "idefics3", "llavaonevision"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request):
    return load_model(f"{request.param}-random", device="cpu", dtype="float32", attn_implementation="eager")


@pytest.fixture(scope="module")
def mixed():
    """Three prompt lengths (right padding) and three image shapes (Idefics3: 5, 3 and 3 crops;
    LLaVA-OneVision: 2, 3 and 3; Qwen2.5-VL: different patch grids)."""
    questions = ["How many objects are in the image?", "How many ?", "Describe the image ."]
    sizes = [(64, 64), (128, 64), (64, 128)]
    out = []
    for i, s in enumerate(shapes_samples(6, seed=11)):
        image = s.image.resize(sizes[i % 3], Image.NEAREST)
        out.append(dataclasses.replace(s, question=questions[i % 3], image=image))
    return out


def messages(question, system=None):
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if system is None:
        return turn
    return [{"role": "system", "content": [{"type": "text", "text": system}]}, *turn]


# ---------------------------------------------------------------- the family and its prompt


def test_the_family_is_found_from_its_config_and_is_not_the_papers(lm):
    family = family_for_config(lm.model.config)
    assert family.name == lm.family.name == lm.name.removesuffix("-random")
    assert family_named(family.name) is family
    assert family.title and family.reference_checkpoint and not lm.trained
    assert not family.in_paper and family.reference_depth("decoder") is None  # groups always scale
    assert family.checkpoint_depth("decoder") > lm.num_layers and family.checkpoint_depth("vision tower")


def test_the_prompt_is_the_checkpoints_chat_template(lm):
    """The family's prompt is what the checkpoint's own chat template renders for one user turn of an image
    and the question (with and without a system message), less the BOS the tokenizer adds."""
    processor, question = lm.processor, "How many objects are in the image?"
    bos = processor.tokenizer.bos_token or ""
    for system in (None, "You are a helpful assistant ."):
        rendered = processor.apply_chat_template(messages(question, system), add_generation_prompt=True)
        if lm.family.name == "qwen25vl" and system is None:  # the Instruct template's default system turn
            rendered = rendered.replace("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", "")
        options = PromptOptions(system_prompt=system)
        assert rendered.removeprefix(bos) == lm.family.prompt(processor, question, options), system
    inputs = lm.encode_samples(shapes_samples(1, seed=0))
    first = processor.tokenizer.convert_ids_to_tokens(int(inputs["input_ids"][0, 0]))
    assert first == (bos or "<|im_start|>")  # the tokenizer's BOS (Qwen has none: the chat markup starts)


def test_the_papers_bare_prompt_is_an_option(lm):
    sample = shapes_samples(1, seed=0)[0]
    bare = dataclasses.replace(lm, prompt_options=PromptOptions(bare=True))
    text = bare.prompt(sample.question)
    assert text.endswith(sample.question) and not any(
        marker in text for marker in ("USER", "user", "User", "<|im_start|>", "<start_of_turn>")
    )
    chat, plain = lm.encode_samples([sample]), bare.encode_samples([sample])
    assert plain["input_ids"].shape[1] < chat["input_ids"].shape[1]
    assert int(bare.vision_mask(plain).sum()) == int(lm.vision_mask(chat).sum())
    with pytest.raises(ValueError, match="bare prompt has no system turn"):
        lm.family.prompt(lm.processor, "?", PromptOptions(bare=True, system_prompt="x"))


def test_answers_are_encoded_after_the_prompt_and_scored_whole(lm, mixed):
    """Training labels cover the answer and the end of the turn only; the teacher-forced encoding (chapter
    3's scoring) is the prompt's tokens followed by the answer's."""
    batch = mixed[:3]
    prompt = lm.encode_samples(batch)
    answers = [str(s.answer) for s in batch]
    with_answers = lm.encode([s.image for s in batch], [s.question for s in batch], answers)
    labels = with_answers["labels"]
    for row, answer in enumerate(answers):
        kept = labels[row][labels[row] != -100].tolist()
        assert kept[:-1] == lm.answer_token_ids(answer) and len(kept) == len(lm.answer_token_ids(answer)) + 1
    tokens = [lm.answer_token_ids(a) for a in answers]
    inputs, read_at, prompt_mask = teacher_forced_inputs(lm, batch, prompt, answers, tokens)
    assert (prompt_mask.sum(1) == prompt["attention_mask"].sum(1)).all()


# ---------------------------------------------------------------- sites


@torch.no_grad()
def test_every_decoder_and_vision_tower_site_is_readable(lm, mixed):
    inputs = lm.encode_samples(mixed[:3])
    b, T = inputs["input_ids"].shape
    L, V = lm.num_layers, lm.num_vision_layers
    kinds = ("resid", "attn", "mlp", "attn_weights")
    decoder = [f"{k}.{l}" for l in range(L) for k in (*kinds, *lm.family.residual_terms(lm.model, l))]
    tower = [f"{k}.{l}" for l in range(V) for k in ("vision", "vision_attn", "vision_mlp", "vision_embed")]
    with Trace(lm, ["embed.0", *decoder, *tower]) as tr:
        lm.forward(inputs)
    width = lm.model.config.get_text_config().hidden_size
    for name in ["embed.0", *decoder]:
        shape = tuple(tr[name].shape)
        assert shape[0] == b and (shape[1:] == (T, width) or name.startswith("attn_weights")), name
    rows = lm.family.vision_crops(lm.model, inputs)
    first = tr["vision.0"]
    for name in tower:
        assert tr[name].shape == first.shape and torch.isfinite(tr[name]).all(), name
    if "image_grid_thw" in inputs:  # packed: one (patches, width) sequence of every image
        assert first.shape[0] == int(inputs["image_grid_thw"].prod(-1).sum())
    else:
        assert first.shape[0] == (sum(rows) if rows else b)
    if lm.family.name == "idefics3":
        assert rows == [5, 3, 3]  # 2 x 2 crops + the global image; a 2:1 image 2 x 1 + 1
    if lm.family.name == "llavaonevision":
        assert rows == [2, 3, 3]  # the whole image + its 1 x 1 anyres grid; a 2:1 image + 2 x 1


@torch.no_grad()
def test_residual_identity_within_1e_5(lm, mixed):
    """H(l) = H(l-1) + attn + mlp, for the decoder (Gemma 3: after the post-sublayer norms) and the tower; in
    Qwen3-VL's DeepStack layers with the injection as a third term (`Family.residual_terms`)."""
    inputs = lm.encode_samples(mixed[:3])
    terms = {l: lm.family.residual_terms(lm.model, l) for l in range(lm.num_layers)}
    sites = [f"{kind}.{l}" for l in range(lm.num_layers) for kind in ("attn", "mlp", *terms[l], "resid")]
    with Trace(lm, ["embed.0", *sites]) as tr:
        lm.forward(inputs)
    previous, real = tr["embed.0"], inputs["attention_mask"].bool()
    for l in range(lm.num_layers):
        rebuilt = previous + tr[f"attn.{l}"] + tr[f"mlp.{l}"] + sum(tr[f"{t}.{l}"] for t in terms[l])
        scale = max(1.0, float(tr[f"resid.{l}"][real].abs().max()))
        assert float((rebuilt - tr[f"resid.{l}"])[real].abs().max()) < 1e-5 * scale, l
        previous = tr[f"resid.{l}"]
    obs = observe(lm, mixed, readings=("contributions", "vision_tower"), batch_size=3, progress=False)
    for part in ("decoder", "vision_tower"):
        assert obs.maxima[f"{part}.identity_error"] < 1e-5 * max(1.0, obs.maxima[f"{part}.max_abs_state"])


@torch.no_grad()
def test_an_identity_patch_changes_nothing(lm, mixed):
    inputs = lm.encode_samples(mixed[:3])
    patches = [
        Patch("attn", (1, 2), (1, 2), "all"),
        Patch("resid", (3,), (3,), "vision"),
        Patch("resid", (0, 5), (0, 5), "text"),
        Patch("vision", (0, 2), (0, 2), "all"),
        Patch("vision_attn", (1,), (1,), "all"),
    ]
    if "deepstack" in lm.family.site_kinds():  # Qwen3-VL: what DeepStack adds after layers 0-2
        patches += [Patch("deepstack", (0, 2), (0, 2), "vision"), Patch("resid", (1,), (1,), "all")]
    clean = run_clean(lm, inputs, [s for p in patches for _, s in p.pairs])
    for p in patches:
        logits, _ = run_patched(lm, inputs, [p], clean)
        assert torch.equal(logits[0], clean.logits), p.name


def test_attention_masses_under_sdpa_equal_eager_attentions(lm, mixed):
    fused = observe(lm, mixed, readings=("attention",), batch_size=3, progress=False)
    eager = observe(lm, mixed, readings=("attention",), batch_size=3, attention="eager", progress=False)
    assert set(fused.stats) == set(eager.stats) and "decoder.quadrant.vt" in fused.stats
    for name in fused.stats:
        np.testing.assert_allclose(fused.mean(name), eager.mean(name), rtol=1e-5, atol=1e-5, err_msg=name)
    assert np.allclose(fused.mean("decoder.last_attn.vision") + fused.mean("decoder.last_attn.text"), 1)


def test_vision_tower_readings_are_per_sample_whatever_the_crops(lm, mixed):
    """A batch of images of different shapes (Idefics3: 5, 3 and 3 crops, padding crops dropped) reads the
    same per-sample vision-tower statistics as each sample alone."""
    together = observe(lm, mixed[:3], readings=("vision_tower",), batch_size=3, progress=False)
    alone = [observe(lm, [s], readings=("vision_tower",), progress=False) for s in mixed[:3]]
    merged = alone[0].merge(alone[1]).merge(alone[2])
    for name in together.stats:
        np.testing.assert_allclose(together.mean(name), merged.mean(name), rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(together.std(name), merged.std(name), rtol=1e-3, atol=1e-5, err_msg=name)


@torch.no_grad()
def test_position_ids_computed_once_are_the_models_own(lm, mixed):
    """Passes that repeat a batch give it the family's position ids (Qwen2.5-VL's 3-D rotary ones)."""
    inputs = lm.encode_samples(mixed[:3])
    positioned = with_positions(lm, inputs)
    if lm.family.name in ("qwen25vl", "qwen3vl"):
        assert positioned["position_ids"].shape == (3, *inputs["input_ids"].shape)
    torch.testing.assert_close(lm.forward(positioned).logits, lm.forward(inputs).logits, rtol=0, atol=0)


@torch.no_grad()
def test_nnsight_reads_the_same_vision_cosines_and_attention_norms(lm, mixed):
    """An independent reading (nnsight's envoys on the family's decoder layers) of chapter 1's cosine of
    consecutive states over the image tokens and chapter 2's attention norm over the text tokens. H^(l) is
    read as the input of decoder layer l (the last: its output), what the next layer reads as transformers
    computed it: in Qwen3-VL's DeepStack layers, after the injection, which no decoder layer outputs."""
    from nnsight import NNsight

    samples = mixed[:2]
    obs = observe(lm, samples, readings=("cosine", "contributions"), batch_size=2, progress=False)
    net = NNsight(lm.model)
    layers = net
    for name in lm.family.decoder_layers.split("."):
        layers = getattr(layers, name)
    attn = lm.family.attn_contribution
    cosines, norms = [], []
    for sample in samples:
        inputs = lm.encode_samples([sample])
        vis = lm.vision_mask(inputs)[0]
        saved = []
        with net.trace(**inputs, use_cache=False):
            for layer in layers:  # in the order the pass reaches them: a layer's input, then its attention
                state = layer.inputs.save()
                saved.append((getattr(layer, attn).output.save(), state))
            last = layers[-1].output.save()
        h = [ins[1]["hidden_states"][0] if not ins[0] else ins[0][0][0] for _, ins in saved]
        h += [last[0]]
        h = [x if x.dim() == 2 else x[0] for x in h]
        cosines.append(
            [
                torch.cosine_similarity(h[l][vis], h[l + 1][vis], dim=-1).mean().item()
                for l in range(len(saved))
            ]
        )
        outs = [a[0] if isinstance(a, tuple) else a for a, _ in saved]
        norms.append([o[0][~vis].norm(dim=-1).mean().item() for o in outs])
    np.testing.assert_allclose(obs.mean("decoder.cosine.vision"), np.mean(cosines, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(obs.mean("decoder.attn_norm.text"), np.mean(norms, 0), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_gemma3_image_tokens_attend_to_each_other_only_with_token_type_ids():
    lm = load_model("gemma3-random", device="cpu", dtype="float32", attn_implementation="eager")
    inputs = lm.encode_samples(shapes_samples(2, seed=3))
    assert "token_type_ids" in inputs
    with_types = observe_batch(lm, inputs, ("attention",))
    causal = observe_batch(lm, {k: v for k, v in inputs.items() if k != "token_type_ids"}, ("attention",))
    # the mean vision query's mass on vision keys: bidirectional within the image, causal without
    assert (
        with_types.mean("decoder.quadrant_mass.vv") > causal.mean("decoder.quadrant_mass.vv") + 1e-3
    ).all()


# ---------------------------------------------------------------- Qwen3-VL's DeepStack


@pytest.fixture(scope="module")
def qwen3vl():
    return load_model("qwen3vl-random", device="cpu", dtype="float32", attn_implementation="eager")


@torch.no_grad()
def test_qwen3vl_deepstack_site_is_what_transformers_adds(qwen3vl, mixed):
    """The DeepStack site of layer k holds what transformers' `_deepstack_process` adds after decoder layer k:
    the k-th DeepStack merger's features at the image positions (zero elsewhere); making it a site changes no
    number of the forward pass (a model never traced gives the same logits, bit for bit)."""
    lm, inputs = qwen3vl, qwen3vl.encode_samples(mixed[:3])
    fresh = load_model("qwen3vl-random", device="cpu", dtype="float32", attn_implementation="eager")
    untouched = fresh.forward(inputs).logits  # before any site of `fresh` is resolved: transformers' own code
    assert not hasattr(fresh.model.model.language_model, "vlmlib_deepstack")
    depth = lm.family.deepstack_layers(lm.model)
    assert depth == 3 and [lm.family.residual_terms(lm.model, l) for l in range(4)] == [
        ("deepstack",)
    ] * 3 + [()]
    sites = [f"deepstack.{k}" for k in range(depth)]
    with Trace(lm, sites) as tr:
        logits = lm.forward(inputs).logits
    torch.testing.assert_close(logits, untouched, rtol=0, atol=0)
    features = lm.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    vis = lm.vision_mask(inputs)
    for k in range(depth):
        added = tr[f"deepstack.{k}"]
        assert added.shape == (*inputs["input_ids"].shape, lm.model.config.text_config.hidden_size)
        torch.testing.assert_close(added[vis], torch.cat(features.deepstack_features[k]), rtol=0, atol=0)
        assert not added[~vis].any() and added[vis].abs().sum() > 0
    with pytest.raises(IndexError, match="DeepStack adds to the residual after decoder layers 0..2"):
        Trace(lm, ["deepstack.3"])


@torch.no_grad()
def test_qwen3vl_deepstack_patched_with_itself_changes_nothing_and_zeroed_changes_the_output(qwen3vl, mixed):
    lm, inputs = qwen3vl, qwen3vl.encode_samples(mixed[:3])
    clean = lm.forward(inputs).logits
    sites = [f"deepstack.{k}" for k in range(3)]
    with Trace(lm, sites, edit=lambda name, value: value.clone()):
        same = lm.forward(inputs).logits
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    for k in range(3):  # each injection matters on its own
        with Trace(lm, [f"deepstack.{k}"], edit=lambda name, value: torch.zeros_like(value)):
            zeroed = lm.forward(inputs).logits
        assert (zeroed - clean).abs().max() > 1e-4, k
    # the generic patch routine: a DeepStack patch between layers changes the output, its own layer does not
    # (a self-patch is refused by check_patches as a no-op row; run_patched runs it as given)
    patches = [*check_patches(lm, [Patch("deepstack", (0,), (2,), "vision")]), Patch("deepstack", (1,), (1,))]
    run = run_clean(lm, inputs, [s for p in patches for _, s in p.pairs])
    moved, _ = run_patched(lm, inputs, patches[:1], run)
    kept, _ = run_patched(lm, inputs, patches[1:], run)
    assert (moved[0] - run.logits).abs().max() > 1e-4
    assert torch.equal(kept[0], run.logits)
    with pytest.raises(PatchConfigError, match="outside"):
        check_patches(lm, [Patch("deepstack", (0,), (3,), "vision")])


def test_only_qwen3vl_has_a_deepstack_site():
    lm = load_model("qwen25vl-random", device="cpu", dtype="float32")
    with pytest.raises(PatchConfigError, match="cannot patch site kind 'deepstack'"):
        check_patches(lm, [Patch("deepstack", (0,), (1,), "vision")])
    assert all(lm.family.residual_terms(lm.model, l) == () for l in range(lm.num_layers))


@torch.no_grad()
def test_qwen3vl_lean_runs_never_skip_what_deepstack_reads_or_adds(qwen3vl, mixed):
    """A lean patched run resumes the decoder only past the DeepStack layers (their resid holds the injection
    already) and skips tower blocks only where the DeepStack mergers still read clean states, or where the
    decoder resumes past the injections; every stack gives the full run's logits."""
    lm, inputs = qwen3vl, qwen3vl.encode_samples(mixed[:3])
    decoder, tower = lm.family.decoder_layers, lm.family.vision_layers
    cases = [  # (patch, what a lean run skips)
        (Patch("attn", (4,), (1,), "all"), []),  # injections at layers 1, 2 need the tower's clean states
        (Patch("resid", (0,), (2,), "vision"), []),  # resid.1 holds injection 1: no decoder resume there
        (Patch("attn", (1,), (5,), "all"), [(tower, 4), (decoder, 5)]),  # past DeepStack: both skipped
        (Patch("deepstack", (0,), (2,), "vision"), []),
        (Patch("vision", (0,), (2,)), []),  # DeepStack reads block 0 and 1: they must run
        (Patch("vision", (2,), (1,)), [(tower, 1)]),  # block 0 returns its clean state, which DeepStack reads
    ]
    for patch, expected in cases:
        patches = check_patches(lm, [patch])
        sources = list(dict.fromkeys(s for _, s in patches[0].pairs)) + patch_resume_sites(lm, patches)
        clean = run_clean(lm, inputs, sources)
        assert sorted(patch_skip_plan(lm, patches, clean)) == sorted(expected), patch.name
        full, _ = run_patched(lm, inputs, patches, clean, lean=False)
        lean, _ = run_patched(lm, inputs, patches, clean)
        torch.testing.assert_close(lean, full, rtol=1e-5, atol=1e-5, msg=patch.name)
        assert (full[0] - clean.logits).abs().max() > 1e-5, patch.name  # a patch that changes something


@torch.no_grad()
def test_qwen3vl_knockouts_replaying_the_tower_equal_a_plain_run(qwen3vl, mixed):
    """Chapter 8 replays the vision tower's clean output for every knockout: Qwen3-VL's includes the
    DeepStack features (a list), tiled with the batch like the rest; knockouts in and after the DeepStack
    layers, lean or not, give a plain run's logits."""
    from vlmlib.interventions.knockout import (
        Knockout,
        knockout_logits,
        knockout_resume_sites,
        recorded_output,
    )

    lm, inputs = qwen3vl, qwen3vl.encode_samples(mixed[:3])
    knockouts = [Knockout((1,), "text"), Knockout((5, 6), "final"), Knockout((0, 1, 2), "all")]
    tower = lm.model.get_submodule(lm.family.vision_tower)
    with recorded_output(tower) as seen:
        clean = run_clean(lm, inputs, knockout_resume_sites(lm, knockouts))
    plain = knockout_logits(lm, inputs, knockouts)
    replayed = knockout_logits(lm, inputs, knockouts, vision_output=seen[0], clean=clean)
    torch.testing.assert_close(replayed, plain, rtol=1e-5, atol=1e-5)
    assert all((plain[k] - clean.logits).abs().max() > 1e-5 for k in range(len(knockouts)))


def test_families_grid_of_vision_tokens():
    """Each family knows the grid its image tokens form over the image (None for a split image)."""
    sample = shapes_samples(1, seed=0)[0]
    expected = {
        "llava": (8, 8),
        "qwen25vl": (4, 4),
        "qwen3vl": (4, 4),
        "gemma3": (4, 4),
        "idefics3": None,
        "llavaonevision": None,
    }
    for name, grid in expected.items():
        lm = load_model(f"{name}-random", device="cpu", dtype="float32")
        inputs = lm.encode_samples([sample])
        assert lm.family.vision_token_grid(lm.model, lm.processor, inputs) == grid, name


# ---------------------------------------------------------------- chapters through the runner


def run_part(tmp_path, family: str, chapters: list[str], parameters: dict, model: str | None = None):
    """Chapters of the family's part through the book runner into tmp_path/out (no training-seed replicates,
    the chapters' notebooks read from this checkout)."""
    from vlmlib.book.plan import make_plan
    from vlmlib.book.runner import run_plan

    plan = make_plan(
        root=ROOT,
        out=tmp_path / "out",
        chapter_selection=chapters,
        only=[family],
        models=[f"{family}={model or family + '-random'}"],
        parameters=[(k, str(v)) for k, v in parameters.items()],
        replicates=False,
    )
    run_plan(plan, progress=False)
    return tmp_path / "out" / family


def check_results(part: Path, family: str, chapters: list[str]):
    for stem in chapters:
        source = next(ROOT.glob(f"notebooks/{stem}*.py")).stem
        results = json.loads((part / f"{source}.json").read_text())
        assert results["family"] == family and results["trained"] is False, source
        assert (part / f"{source}.ipynb").is_file()
        for finding in results.get("findings", []):  # random weights: numbers shown, no verdict
            assert finding["verdict"] == "not comparable on these models", (source, finding)


@pytest.mark.parametrize("family", FAMILIES)
def test_chapters_1_and_3_run_on_each_family(tmp_path, family):
    chapters = ["01", "03"]
    part = run_part(tmp_path, family, chapters, {"n_samples": 4})
    check_results(part, family, chapters)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_other_chapter_runs_on_each_family(tmp_path, family):
    """Chapters 2 and 4-8 (chapter 5's probes need at least 4 samples of each of the 6 categories: 48
    samples, 2 folds); chapters 1 and 3 are the test above."""
    part = run_part(tmp_path, family, ["02", "04", "06", "07", "08"], {"n_samples": 4})
    run_part(tmp_path, family, ["05"], {"n_samples": 48, "folds": 2})
    check_results(part, family, ["02", "04", "05", "06", "07", "08"])


@pytest.mark.parametrize("family", FAMILIES)
def test_chapter_9_runs_on_each_family(tmp_path, family):
    """Text against image: hints before the question, their tokens found and knocked out in each family."""
    part = run_part(
        tmp_path, family, ["09"], {"n_samples": 4, "knockout_samples": 4, "counterfactual_pairs": 4}
    )
    check_results(part, family, ["09"])


def test_a_checkpoint_folder_makes_its_familys_part_with_pages(tmp_path):
    """`--model gemma3=<folder>` makes a Gemma 3 part (no code names it): its chapters' pages, What holds
    rows and side-by-side lines appear."""
    from vlmlib.book import pages
    from vlmlib.book.manifest import built_parts
    from vlmlib.organisms.family_models import tiny_gemma3

    model, processor = tiny_gemma3()
    folder = tmp_path / "my-gemma3"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    project = tmp_path / "project"
    shutil.copytree(ROOT / "notebooks", project / "notebooks")
    from vlmlib.book.plan import make_plan
    from vlmlib.book.runner import run_plan

    run_plan(
        make_plan(
            root=project,
            chapter_selection=["03", "06"],
            only=["gemma3"],
            models=[f"gemma3={folder}"],
            parameters=[("n_samples", "4")],
            replicates=False,
        ),
        progress=False,
    )
    parts = built_parts(project / "book")
    assert parts == {"gemma3": str(folder)}
    pages.generate_pages(project, parts)
    holds = (project / "book" / "what-holds.md").read_text()
    side = (project / "book" / "side-by-side.md").read_text()
    assert "Gemma 3" in holds and "Gemma 3" in side
    assert "gemma3/03_attention_patching.ipynb" in holds


# ---------------------------------------------------------------- stand-ins of the real checkpoints


@pytest.mark.parametrize("name", FAMILY_STANDIN_NAMES)
def test_full_size_stand_ins_have_the_hubs_parameter_count(name):
    """Built on the meta device (no memory): every parameter as on the hub (its model-size figure)."""
    from vlmlib.organisms.family_models import FAMILY_STANDINS, family_standin_config

    cls, config, _ = family_standin_config(name, full=True)
    with torch.device("meta"):
        model = cls._from_config(config)
    assert sum(p.numel() for p in model.parameters()) == FAMILY_STANDINS[name]["parameters"]


# name -> (family, image token id, image tokens of one 64 px shapes image, the prompt's first token ids)
STANDIN_CHECKS = {
    "llava-1.5-7b": ("llava", 32000, 576, [1]),  # <s>; 336 px / 14 = 24 x 24 patches
    "qwen2.5-vl-3b": ("qwen25vl", 151655, 4, [151644]),  # <|im_start|>; 64 px -> 56 px (min_pixels): 2 x 2
    "qwen3-vl-2b": ("qwen3vl", 151655, 64, [151644]),  # <|im_start|>; 64 px -> 256 px (min_pixels): 8 x 8
    "gemma-3-4b": ("gemma3", 262144, 256, [2, 105]),  # <bos><start_of_turn>; 896 px pooled to 16 x 16
    "smolvlm-instruct": ("idefics3", 49153, 17 * 81, [1]),  # <|im_start|>; 4 x 4 crops + global, 81 each
    # <|im_start|>; the whole image (27 x 27) + its 1 x 1 grid, unpadded, a newline ending each of 27 rows
    "llava-onevision-0.5b": ("llavaonevision", 151646, 27 * 27 + 27 * 28, [151644]),
}


@pytest.mark.parametrize("name", list(STANDIN_CHECKS))
@torch.no_grad()
def test_tiny_stand_ins_load_as_random_weights_with_the_real_ids(tmp_path, name):
    """The real depths, ids, template and image processing at tiny width, saved and loaded as a downloaded
    checkpoint would be: untrained (no verdicts on its pages), its prompt and image tokens the real ones,
    its deepest decoder and vision-tower sites readable."""
    from vlmlib.organisms.family_models import FAMILY_STANDINS, save_family_standin

    family, image_token, n_image, first = STANDIN_CHECKS[name]
    lm = load_model(str(save_family_standin(name, tmp_path / name)), device="cpu", dtype="float32")
    real = FAMILY_STANDINS[name]
    assert lm.family.name == family and not lm.trained and "random weights" in lm.description
    assert lm.num_layers == real["layers"] and lm.family.checkpoint_depth("decoder") == real["layers"]
    assert lm.family.checkpoint_depth("vision tower") == lm.num_vision_layers
    assert lm.image_token_id == image_token
    inputs = lm.encode_samples(shapes_samples(1, seed=0))
    assert inputs["input_ids"][0, : len(first)].tolist() == first
    assert int(lm.vision_mask(inputs).sum()) == n_image
    last, tower = f"resid.{lm.num_layers - 1}", f"vision.{lm.num_vision_layers - 1}"
    with Trace(lm, [last, tower]) as tr:
        lm.forward_base(inputs)
    assert torch.isfinite(tr[last]).all() and torch.isfinite(tr[tower]).all()


def test_every_family_is_a_part_that_runs_when_given_a_model():
    from vlmlib.book.plan import DEFAULT_MODELS, UsageError, book_parts, make_plan

    assert book_parts()[:2] == list(DEFAULT_MODELS) and set(FAMILIES) <= set(book_parts())
    plan = make_plan(chapter_selection=["01"], models=["gemma3=gemma3-random"])
    assert plan.parts == {**DEFAULT_MODELS, "gemma3": "gemma3-random"}  # the default parts, and this one
    plan = make_plan(chapter_selection=["01"], only=["llava"], models=["llava=llava-random"])
    assert plan.parts == {"llava": "llava-random"}
    with pytest.raises(UsageError, match="part 'gemma3' has no default model; give it one with --model"):
        make_plan(only=["gemma3"])
    with pytest.raises(UsageError, match="that is a llava model.*use --model llava=llava-random"):
        make_plan(only=["gemma3"], models=["gemma3=llava-random"])
