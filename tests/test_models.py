import pytest
import torch

from vlmlib import ModelLoadError, UnsupportedModelError, load_model


def test_unknown_name_lists_what_exists():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'.*paligemma-random"):
        load_model("no-such-model")


def test_hub_id_without_network_says_how_to_provide_weights():
    with pytest.raises(ModelLoadError, match="local folder|HF cache") as err:
        load_model("google/paligemma-3b-pt-224-does-not-exist")
    assert "HF_HUB_OFFLINE" in str(err.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_text_only_model_is_refused(tmp_path):
    from transformers import GemmaConfig

    GemmaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=100,
    ).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="text-only"):
        load_model(str(tmp_path))


def test_unsupported_vision_language_family_is_refused(tmp_path):
    from transformers import Blip2Config  # a vision-language family no file in vlmlib/families/ describes

    Blip2Config().save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="not a supported vision-language family"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("name", ["paligemma-random", "qwen2vl-random"])
def test_saved_folder_reloads_with_transformers_classes(tmp_path, name, samples):
    lm = load_model(name, device="cpu")
    lm.model.save_pretrained(tmp_path)
    lm.processor.save_pretrained(tmp_path)
    again = load_model(str(tmp_path), device="cpu")
    assert again.family == lm.family and again.trained
    assert again.description == f"local checkpoint {tmp_path}"  # a path is never taken for an embedded name
    with torch.no_grad():
        a = lm.forward(lm.encode_samples(samples)).logits
        b = again.forward(again.encode_samples(samples)).logits
    torch.testing.assert_close(a, b)


def test_site_table_and_prompt_format(lm, samples):
    inputs = lm.encode_samples(samples[:2])
    tokens = lm.processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    n_vision = int(lm.vision_mask(inputs)[0].sum())
    if lm.family.name == "paligemma":
        assert "token_type_ids" in inputs and "labels" not in inputs  # prefix-LM mask on, no labels
        assert tokens[:n_vision] == ["<image>"] * n_vision and tokens[n_vision] == "<bos>"
    else:
        assert "image_grid_thw" in inputs
        assert tokens[-3:] == ["<|im_start|>", "assistant", "\n"]  # chat template, generation prompt
    assert lm.num_layers == 8 and lm.num_vision_layers == 4


def test_training_labels_cover_only_the_answer(lm, samples):
    inputs = lm.encode_samples(samples[:2], with_answers=True)
    for row, sample in enumerate(samples[:2]):
        kept = inputs["labels"][row][inputs["labels"][row] != -100].tolist()
        assert kept[0] == lm.token_id(sample.answer)
        assert kept[-1] == lm.processor.tokenizer.eos_token_id and len(kept) == 2


def test_cuda_request_without_gpu_is_clear():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        load_model("paligemma-random", device="cuda")


# ------------------------------------------------------- prompts: the organisms see what they were trained on


def test_organisms_inputs_are_unchanged(samples):
    """The organisms were trained on the prompt the families built before PromptOptions existed:
    PaliGemma "<image>" + question, Qwen2-VL the organism's own chat template (no system turn)."""
    from vlmlib.organisms.train import encode as training_encode

    for name in ("paligemma-shapes", "qwen2vl-shapes"):
        lm = load_model(name, device="cpu")
        images, questions = [s.image for s in samples[:3]], [s.question for s in samples[:3]]
        if lm.family.name == "paligemma":
            prompts = [lm.processor.image_token + q for q in questions]
            before = lm.processor(text=prompts, images=images, padding="longest", return_tensors="pt")
        else:
            messages = [
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
                for q in questions
            ]
            prompts = [
                lm.processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
                for m in messages
            ]
            before = lm.processor(text=prompts, images=images, padding=True, return_tensors="pt")
        now = lm.encode_samples(samples[:3])
        assert torch.equal(now["input_ids"], before["input_ids"]), name
        trained_on = training_encode(lm.family, lm.processor, samples[:3], [False] * 3, with_answers=False)
        assert torch.equal(now["input_ids"], trained_on["input_ids"]), name


def test_answer_token_ids_and_first_token(lm):
    ids = lm.answer_token_ids("3")
    assert ids == [lm.token_id("3")] and lm.answer_token_ids(3) == ids
    with pytest.raises(ValueError, match="no answer"):
        lm.answer_token_ids(None)


# ---------------------------------------------------------------- broken checkpoints (issue 11 item 7)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    lm = load_model("qwen2vl-random", device="cpu")
    lm.model.save_pretrained(folder)
    lm.processor.save_pretrained(folder)
    return folder


def broken_copy(saved, tmp_path, drop=(), edit=None):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(saved, folder)
    for name in drop:
        (folder / name).unlink()
    if edit:
        edit(folder)
    return folder


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[: len(data) + keep])


@pytest.mark.parametrize(
    "case, edit, message",
    [
        (
            "empty weights",
            lambda f: (f / "model.safetensors").write_bytes(b""),
            r"model\.safetensors is empty \(0 bytes\)",
        ),
        (
            "cut in the tensors",
            lambda f: _truncate(f / "model.safetensors", -1000),
            r"model\.safetensors is truncated: [\d,]+ bytes where its header promises",
        ),
        (
            "cut in the header",
            lambda f: _truncate(f / "model.safetensors", 20),
            r"model\.safetensors is truncated",
        ),
        (
            "cut tokenizer",
            lambda f: _truncate(f / "tokenizer.json", 100),
            r"tokenizer\.json is not valid JSON",
        ),
    ],
)
def test_broken_files_are_named(saved, tmp_path, case, edit, message):
    folder = broken_copy(saved, tmp_path, edit=edit)
    with pytest.raises(ModelLoadError, match=message) as err:
        load_model(str(folder), device="cpu")
    assert str(folder) in str(err.value) and "again" in str(err.value)  # names the file and what to do


@pytest.mark.parametrize(
    "missing, message",
    [
        (["model.safetensors"], r"has no weights \(no model\.safetensors"),
        (["tokenizer.json"], r"has no tokenizer file \(tokenizer\.json or tokenizer\.model\)"),
        (
            ["processor_config.json"],
            r"has no image-processor settings \(processor_config\.json or preprocessor_config\.json\)",
        ),
    ],
)
def test_missing_files_are_named(saved, tmp_path, missing, message):
    folder = broken_copy(saved, tmp_path, drop=missing)
    with pytest.raises(ModelLoadError, match=message) as err:
        load_model(str(folder), device="cpu")
    assert str(folder) in str(err.value) and "save_pretrained" in str(err.value)


def test_missing_shard_is_named(saved, tmp_path):
    import json

    def shard(folder):
        (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
        index = {
            "metadata": {},
            "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))

    folder = broken_copy(saved, tmp_path, edit=shard)
    with pytest.raises(
        ModelLoadError,
        match=r"model-00002-of-00002\.safetensors is missing \(listed in model\.safetensors\.index\.json\)",
    ):
        load_model(str(folder), device="cpu")


def test_intact_copy_still_loads(saved, tmp_path):
    assert load_model(str(broken_copy(saved, tmp_path)), device="cpu").family.name == "qwen2vl"


def test_last_token_logits_match_the_full_forward(lm, samples):
    import dataclasses

    mixed = [
        dataclasses.replace(s, question=q)
        for s, q in zip(samples, ["How many ?", samples[0].question, "How"])
    ]
    inputs = lm.encode_samples(mixed)
    assert not inputs["attention_mask"].all()  # right-padded: the last real token differs per row
    with torch.no_grad():
        full = lm.forward(inputs).logits
        last = lm.last_token_logits(inputs)
    rows = torch.arange(full.shape[0])
    torch.testing.assert_close(last, full[rows, lm.last_index(inputs)])


@pytest.mark.parametrize("family", ["paligemma", "qwen2vl"])
def test_a_checkpoint_spread_by_accelerate_reads_the_same(family, monkeypatch):
    """device='shard' hands device_map='auto' to from_pretrained (accelerate places the modules: on a CPU-only
    machine, all on the CPU); the model must answer and trace exactly as when loaded plainly."""
    pytest.importorskip("accelerate")
    from vlmlib.data import shapes_samples
    from vlmlib.families import family_named
    from vlmlib.observation import observe
    from vlmlib.organisms import WEIGHTS_DIR

    family_class = type(family_named(family))
    seen, real = [], family_class.classes

    def recording_classes(fam):
        model_cls, processor_cls = real(fam)

        class Recorded:
            @staticmethod
            def from_pretrained(*args, **kwargs):
                seen.append(kwargs.get("device_map"))
                return model_cls.from_pretrained(*args, **kwargs)

        return Recorded, processor_cls

    monkeypatch.setattr(family_class, "classes", recording_classes)
    folder = str(WEIGHTS_DIR / f"{family}-shapes")
    plain, spread = load_model(folder, device="cpu"), load_model(folder, device="shard")
    assert seen == [None, "auto"] and spread.device == torch.device("cpu")
    samples = shapes_samples(3, seed=4, split="test")
    inputs = plain.encode_samples(samples)
    with torch.no_grad():
        torch.testing.assert_close(
            spread.last_token_logits(spread.encode_samples(samples)), plain.last_token_logits(inputs)
        )
    a, b = observe(plain, samples), observe(spread, samples)
    for name, summary in a.summary().items():
        torch.testing.assert_close(
            torch.as_tensor(b.summary()[name]["mean"]), torch.as_tensor(summary["mean"])
        )


def test_device_map_without_accelerate_or_on_a_built_model_is_clear(monkeypatch):
    import importlib.util

    from vlmlib.organisms import WEIGHTS_DIR

    with pytest.raises(ValueError, match="built in code"):
        load_model("paligemma-random", device="shard")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a)
    )
    with pytest.raises(ModelLoadError, match="pip install accelerate"):
        load_model(str(WEIGHTS_DIR / "qwen2vl-shapes"), device="shard")
