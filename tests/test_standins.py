"""Stand-ins for the paper's checkpoints (Qwen2-VL-2B-Instruct, PaliGemma-3B-448): the real structure,
ids, template and processor settings at tiny width, saved with save_pretrained and loaded through
the public path (`load_model(folder)`), as a researcher's downloaded checkpoint would be."""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from vlmlib import load_model, observe, shapes_samples
from vlmlib.data import QUESTION
from vlmlib.observation import READINGS
from vlmlib.organisms.builders import (
    PALIGEMMA_SPECIAL_IDS,
    QWEN2VL_INSTRUCT_CHAT_TEMPLATE,
    QWEN2VL_SPECIAL_IDS,
    REAL_CONFIGS,
    save_standin,
    standin,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Both stand-ins written once, in bf16 like the hub's weights."""
    base = tmp_path_factory.mktemp("standins")
    return {name: save_standin(name, base / name) for name in REAL_CONFIGS}


@pytest.fixture(scope="module")
def qwen(folders):
    return load_model(str(folders["qwen2vl-2b"]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def paligemma(folders):
    return load_model(str(folders["paligemma-3b-448"]), device="cpu", dtype="float32")


def test_standins_load_as_untrained_so_pages_warn(qwen, paligemma):
    """Random weights saved to a folder are still random: the banner's untrained warning must show."""
    from vlmlib.paper.page import model_banner

    for lm in (qwen, paligemma):
        assert not lm.trained and "Untrained model" in model_banner(lm)


def photo(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_full_size_structure_has_the_hubs_parameter_count(name):
    """The full-size configuration, built on the meta device (no memory): every parameter as on the hub."""
    from vlmlib.organisms import builders as tiny

    real = REAL_CONFIGS[name]
    config, _ = tiny.standin_config(real, full=True)
    cls = tiny.standin_model_class(real)
    with torch.device("meta"):
        model = cls._from_config(config)
    # Qwen2-VL-2B-Instruct: the hub index's 4,417,971,200 bytes in bf16. PaliGemma-3B-pt-224 has
    # 2,923,466,480; at 448 px SigLIP's position table grows from 256 to 1,024 rows of 1,152.
    expected = {"qwen2vl-2b": 2_208_985_600, "paligemma-3b-448": 2_923_466_480 + (1024 - 256) * 1152}[name]
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_a_depth_slice_keeps_the_width_and_takes_the_layers_asked_for(name):
    """benchmarks/observe_overhead.py times slices of the full-width models: only the depths may change."""
    from vlmlib.families import family_for_config

    whole, _ = standin(name)
    sliced, _ = standin(name, depths=(2, 3))
    family = family_for_config(sliced.config)
    assert (family.num_layers(sliced), family.num_vision_layers(sliced)) == (2, 3)
    assert (family.num_layers(whole), family.num_vision_layers(whole)) == (
        REAL_CONFIGS[name]["layers"],
        REAL_CONFIGS[name]["vision_layers"],
    )
    assert sliced.config.get_text_config().hidden_size == whole.config.get_text_config().hidden_size
    with pytest.raises(ValueError, match="at least one decoder and one vision layer"):
        standin(name, depths=(0, 3))


def test_tiny_standins_keep_depth_heads_ids_and_ties(qwen, paligemma):
    for lm, name in ((qwen, "qwen2vl-2b"), (paligemma, "paligemma-3b-448")):
        real, text = REAL_CONFIGS[name], lm.model.config.get_text_config()
        assert lm.num_layers == real["layers"] and lm.num_vision_layers == real["vision_layers"]
        assert (text.num_attention_heads, text.num_key_value_heads) == (real["heads"], real["kv_heads"])
        assert text.vocab_size == real["vocab"]
        assert lm.model.lm_head.weight is lm.model.get_input_embeddings().weight
    tok = qwen.processor.tokenizer
    assert {t: tok.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_IDS} == QWEN2VL_SPECIAL_IDS
    assert qwen.image_token_id == 151655 and tok.eos_token_id == 151645 and tok.pad_token_id == 151643
    assert qwen.processor.chat_template == QWEN2VL_INSTRUCT_CHAT_TEMPLATE
    size = qwen.processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (3136, 12845056)
    tok = paligemma.processor.tokenizer
    assert {t: tok.convert_tokens_to_ids(t) for t in PALIGEMMA_SPECIAL_IDS} == PALIGEMMA_SPECIAL_IDS
    assert tok.convert_tokens_to_ids("\n") == 108 and tok.convert_tokens_to_ids("<loc0000>") == 256000
    assert paligemma.image_token_id == 257152


# ---------------------------------------------------------------- prompts as the paper ran them


def test_qwen2vl_prompt_has_no_system_turn_unless_asked(folders, qwen):
    inputs = qwen.encode([photo(64, 64)], [QUESTION])
    tokens = qwen.processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    first_image = tokens.index("<|image_pad|>")
    assert tokens[:first_image] == ["<|im_start|>", "user", "\n", "<|vision_start|>"]  # nothing but markup
    assert tokens[-3:] == ["<|im_start|>", "assistant", "\n"]
    # Asked for, the Instruct template's default system prompt comes back exactly as its template writes it.
    with_system = load_model(
        str(folders["qwen2vl-2b"]), device="cpu", system_prompt="You are a helpful assistant."
    )
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    assert with_system.prompt(QUESTION) == qwen.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert with_system.prompt_settings()["system_prompt"] == "You are a helpful assistant."


def test_paligemma_prompt_448px_and_task_prefix(folders, paligemma):
    inputs = paligemma.encode([photo(640, 480)], [QUESTION])
    ids = inputs["input_ids"][0].tolist()
    # <image> x 1024, <bos>, ..., "\n"
    assert ids[:1024] == [257152] * 1024 and ids[1024] == 2 and ids[-1] == 108
    assert inputs["pixel_values"].shape[-2:] == (448, 448)
    prefixed = load_model(str(folders["paligemma-3b-448"]), device="cpu", task_prefix="answer en ")
    tokens = prefixed.processor.tokenizer.convert_ids_to_tokens(
        prefixed.encode([photo(64, 64)], [QUESTION])["input_ids"][0]
    )
    assert tokens[1024:1028] == ["<bos>", "answer", "en", "How"]
    with pytest.raises(ValueError, match="system_prompt"):
        load_model(
            str(folders["paligemma-3b-448"]), device="cpu", system_prompt="You are a helpful assistant."
        )
    with pytest.raises(ValueError, match="max_pixels.*fixed size"):
        load_model(str(folders["paligemma-3b-448"]), device="cpu", max_pixels=200_000)


def test_qwen2vl_keeps_native_resolution_unless_max_pixels(folders, qwen):
    def n_image_tokens(lm, im):
        return int(lm.vision_mask(lm.encode([im], [QUESTION]))[0].sum())

    assert n_image_tokens(qwen, photo(640, 480)) == 391  # the processor's default, as the paper ran it
    assert n_image_tokens(qwen, photo(1920, 1080)) == 2691
    capped = load_model(str(folders["qwen2vl-2b"]), device="cpu", max_pixels=448 * 448)
    assert n_image_tokens(capped, photo(1920, 1080)) <= 448 * 448 // (28 * 28)
    # small images unchanged
    assert n_image_tokens(capped, photo(64, 64)) == n_image_tokens(qwen, photo(64, 64))
    assert capped.prompt_settings()["max_pixels"] == 448 * 448
    with pytest.raises(ValueError, match="min_pixels"):
        load_model(str(folders["qwen2vl-2b"]), device="cpu", max_pixels=1000)


def test_multi_token_answers_are_kept_whole(qwen, paligemma):
    assert len(qwen.answer_token_ids("10")) == 2  # Qwen2 splits digits one by one
    assert qwen.token_id("10") == qwen.answer_token_ids("1")[0]
    assert qwen.answer_token_ids(10) == qwen.answer_token_ids("10")  # a numeric answer
    with pytest.raises(ValueError, match="no token"):
        qwen.answer_token_ids("")
    # The ids are the training labels' (what the model would be scored on after the prompt)
    batch = qwen.encode([photo(64, 64)], [QUESTION], ["10"])
    labels = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert labels == qwen.answer_token_ids("10") + [qwen.processor.tokenizer.eos_token_id]
    batch = paligemma.encode([photo(64, 64)], [QUESTION], ["10"])
    labels = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert labels == paligemma.answer_token_ids("10") + [paligemma.processor.tokenizer.eos_token_id]


# ---------------------------------------------------------------- memory and processors


def test_observation_pass_of_a_standin_reads_no_logits(qwen):
    calls = []
    handle = qwen.model.lm_head.register_forward_hook(lambda m, a, out: calls.append(out.shape))
    try:
        obs = observe(qwen, [shapes_samples(1)[0]] * 2, readings=READINGS, progress=False)
    finally:
        handle.remove()
    assert calls == [] and obs.n_samples == 2
    assert obs.mean("decoder.cosine.vision").shape == (28,)


def test_processor_choice_does_not_depend_on_torchvision(folders, qwen, paligemma):
    """torchvision cannot be installed here. With it, transformers' AutoImageProcessor picks a torchvision
    class; we pin the PIL backend so that pixels are the same on every machine. Pretending torchvision is
    there must neither break loading nor change the pixels."""
    import transformers.models.auto.image_processing_auto as auto

    image = photo(320, 240)
    expected = {lm.family.name: lm.encode([image], [QUESTION])["pixel_values"] for lm in (qwen, paligemma)}
    with mock.patch.object(auto, "is_torchvision_available", lambda: True):
        for name in folders:
            lm = load_model(str(folders[name]), device="cpu", dtype="float32")
            assert type(lm.processor.image_processor).__name__.endswith("Pil")
            torch.testing.assert_close(
                lm.encode([image], [QUESTION])["pixel_values"], expected[lm.family.name]
            )


# ---------------------------------------------------------------- a chapter through papermill


def test_chapter_runs_on_a_standin_folder_through_papermill(folders, tmp_path):
    """What a researcher types: papermill on a chapter with `-p model <folder>`."""
    import jupytext

    bin_dir = Path(sys.executable).parent
    notebook = tmp_path / "01.ipynb"
    jupytext.write(jupytext.read(ROOT / "notebooks" / "01_representations.py"), notebook)
    results = tmp_path / "01.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run(
        [
            str(bin_dir / "papermill"),
            str(notebook),
            str(tmp_path / "out.ipynb"),
            "-k",
            "python3",
            "-p",
            "model",
            str(folders["qwen2vl-2b"]),
            "-p",
            "n_samples",
            "2",
            "-p",
            "batch_size",
            "2",
            "-p",
            "dtype",
            "float32",
            "-p",
            "device",
            "cpu",
            "-p",
            "results",
            str(results),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    written = json.loads(results.read_text())
    assert written["num_layers"] == 28 and written["model"] == str(folders["qwen2vl-2b"])
    assert len(written["avg_sim"]["vision"]["mean"]) == 28


def test_hub_file_layout_loads(folders, tmp_path):
    """The hub's Qwen2-VL-2B-Instruct ships a legacy preprocessor_config.json (min_pixels/max_pixels keys,
    processor_class Qwen2VLProcessor, whose video processor needs torchvision) and chat_template.json
    instead of processor_config.json: the loader must read that layout too."""
    import shutil

    folder = tmp_path / "hub-layout"
    shutil.copytree(folders["qwen2vl-2b"], folder)
    saved = json.loads((folder / "processor_config.json").read_text())["image_processor"]
    (folder / "processor_config.json").unlink()
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    legacy = {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": saved["image_mean"],
        "image_std": saved["image_std"],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(legacy))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2VL_INSTRUCT_CHAT_TEMPLATE}))
    lm = load_model(str(folder), device="cpu", dtype="float32")
    size = lm.processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (3136, 12845056)
    assert int(lm.vision_mask(lm.encode([photo(640, 480)], [QUESTION]))[0].sum()) == 391
