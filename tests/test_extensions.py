"""Extending the toolkit: a family added in one file (tests/toy_family.py, ViP-LLaVA) and a chapter added in
one file (tests/toy_chapter.py), each working without a change to vlmlib."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import toy_chapter
from toy_family import VIPLLAVA, tiny_vipllava

from vlmlib import (
    Patch,
    Trace,
    family_for_config,
    knockout_experiment,
    layer_sweep,
    load_model,
    observe,
    patch_experiment,
    register_family,
    shapes_samples,
)
from vlmlib.families import unregister_family

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy family registered, and a tiny random ViP-LLaVA saved as a checkpoint folder and loaded."""
    register_family(VIPLLAVA)
    try:
        model, processor = tiny_vipllava()
        folder = tmp_path_factory.mktemp("vipllava")
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        yield load_model(str(folder), device="cpu", dtype="float32", attn_implementation="eager")
    finally:
        unregister_family(VIPLLAVA.name)


def test_the_family_is_recognised_and_refused_without_registration(toy):
    assert toy.family.name == "vipllava" and family_for_config(toy.model.config).title == "ViP-LLaVA"
    unregister_family(VIPLLAVA.name)
    try:
        with pytest.raises(ValueError, match="not a supported vision-language family"):
            family_for_config(toy.model.config)
    finally:
        register_family(VIPLLAVA)


@torch.no_grad()
def test_residual_identity_and_an_identity_patch(toy):
    samples = shapes_samples(3, seed=5)
    inputs = toy.encode_samples(samples)
    assert (toy.vision_mask(inputs).sum(1) == 64).all()
    sites = [f"{kind}.{layer}" for layer in range(toy.num_layers) for kind in ("resid", "attn", "mlp")]
    with Trace(toy, ["embed.0", *sites]) as tr:
        clean = toy.forward(inputs).logits
    previous = tr["embed.0"]
    for layer in range(toy.num_layers):
        rebuilt = previous + tr[f"attn.{layer}"] + tr[f"mlp.{layer}"]
        torch.testing.assert_close(rebuilt, tr[f"resid.{layer}"], atol=1e-5, rtol=1e-5)
        previous = tr[f"resid.{layer}"]
    recorded = {name: tr[name] for name in sites}
    with Trace(toy, sites, edit=lambda name, value: recorded[name]):
        patched = toy.forward(inputs).logits
    assert torch.equal(patched, clean)


def test_readings_patching_and_knockouts_run_on_the_new_family(toy):
    samples = shapes_samples(4, seed=6)
    fused, eager = (
        observe(toy, samples, progress=False),
        observe(toy, samples, attention="eager", progress=False),
    )
    for name in ("decoder.last_attn.vision", "decoder.quadrant.tv"):
        torch.testing.assert_close(
            torch.as_tensor(fused.mean(name)), torch.as_tensor(eager.mean(name)), atol=1e-5, rtol=1e-5
        )
    assert fused.maxima["decoder.identity_error"] < 1e-4
    rows = patch_experiment(toy, samples, [Patch("resid", (0,), (2,), "vision")], batch_size=4).rows()
    assert rows and all(r["n"] == 4 for r in rows)
    result = knockout_experiment(
        toy, samples, layer_sweep(toy.num_layers, "final", schemes=("layer",)), batch_size=4
    )
    assert len(result.rows()) == toy.num_layers


def test_a_chapter_in_one_file_runs_and_reaches_the_pages(tmp_path, monkeypatch):
    """The toy chapter through the runner (its notebook in a project, its spec registered), then the generated
    pages: its results carry its claim's verdict, What holds has its row, side by side its figure."""
    from vlmlib.book import pages
    from vlmlib.book.plan import make_plan
    from vlmlib.book.runner import run_plan
    from vlmlib.paper.chapters import register_chapter, unregister_chapter

    monkeypatch.setattr("vlmlib.book.runner.replicates", lambda model: [])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    )
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / f"{toy_chapter.CHAPTER}.py").write_text(toy_chapter.NOTEBOOK)
    register_chapter(toy_chapter.SPEC)
    try:
        run_plan(make_plan(root=tmp_path, only=["paligemma"], replicates=False), progress=False)
        results = json.loads((tmp_path / "book" / "paligemma" / "09_toy.json").read_text())
        (finding,) = results["findings"]
        assert finding["claim_id"] == "toy-readable" and finding["verdict"] in ("holds", "does not hold")
        pages.generate_pages(tmp_path, {"paligemma": "paligemma-shapes"})
        what_holds = (tmp_path / "book" / "what-holds.md").read_text()
        assert "The answer is readable" in what_holds and finding["verdict"] in what_holds
        assert (tmp_path / "book" / "_generated" / "side-by-side-09_toy.png").is_file()
    finally:
        unregister_chapter(toy_chapter.CHAPTER)
