import pytest
import torch

from vlmlib.families import UnsupportedModelError
from vlmlib.models import ModelLoadError, load_model


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

    GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, vocab_size=100).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="text-only"):
        load_model(str(tmp_path))


def test_unsupported_vision_language_family_is_refused(tmp_path):
    from transformers import LlavaConfig

    LlavaConfig().save_pretrained(tmp_path)
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
