"""Tiny PaliGemma and Qwen2-VL models built offline with transformers' own classes.

A word-level tokenizer over the `shapes` vocabulary, the family's real processor, and a small
config. Random weights (seeded) serve the unit tests; the organisms' training script starts from
the same builders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GemmaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    SiglipVisionConfig,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from .data import VOCABULARY


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor without its video processor (which needs torchvision)."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]


# Qwen2-VL's chat template, reduced to a user turn of images and text (what `apply_chat_template`
# needs to format the same prompt for a tiny model and for the hub checkpoint).
QWEN2VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyShape:
    """Size of a tiny model: small enough for milliseconds per sample on a CPU."""

    image_size: int = 64  # pixels per side
    patch_size: int = 8  # vision patch side
    hidden: int = 128  # decoder and vision width
    intermediate: int = 512  # MLP width
    decoder_layers: int = 8
    vision_layers: int = 4
    heads: int = 4
    head_dim: int = 32


def word_tokenizer(specials: list[str], words: list[str], bos: str | None, eos: str, pad: str) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*specials, *words, "\n"]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    # Specials must be *special* tokens, or the processors miscount image tokens.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken("\n", normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>")


def tiny_paligemma(shape: TinyShape = TinyShape(), seed: int = 0):
    """(model, processor) of a random-weight PaliGemma: SigLIP tower, linear projector, Gemma decoder."""
    tok = word_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], VOCABULARY, "<bos>", "<eos>", "<pad>")
    tok.image_token, tok.image_token_id = "<image>", tok.convert_tokens_to_ids("<image>")
    image_proc = SiglipImageProcessorPil(size={"height": shape.image_size, "width": shape.image_size})
    image_proc.image_seq_length = (shape.image_size // shape.patch_size) ** 2
    processor = PaliGemmaProcessor(image_processor=image_proc, tokenizer=tok)
    tok = processor.tokenizer  # now with PaliGemma's <loc>/<seg> tokens
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.vision_layers,
            num_attention_heads=shape.heads, image_size=shape.image_size, patch_size=shape.patch_size,
            vision_use_head=False),
        text_config=GemmaConfig(
            vocab_size=len(tok), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
            num_hidden_layers=shape.decoder_layers, num_attention_heads=shape.heads, num_key_value_heads=1,
            head_dim=shape.head_dim, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id),
        image_token_index=tok.image_token_id, vocab_size=len(tok), projection_dim=shape.hidden,
        hidden_size=shape.hidden)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model.eval(), processor


def tiny_qwen2vl(shape: TinyShape = TinyShape(), seed: int = 0):
    """(model, processor) of a random-weight Qwen2-VL: its ViT with 2x2 patch merger, Qwen2 decoder."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>", "<unk>"]
    tok = word_tokenizer(specials, [*VOCABULARY, "user", "assistant"], None, "<|im_end|>", "<|endoftext|>")
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    side = shape.image_size
    image_proc = Qwen2VLImageProcessorPil(patch_size=shape.patch_size, merge_size=2, temporal_patch_size=2,
                                          min_pixels=side * side, max_pixels=side * side)
    processor = Qwen2VLImageOnlyProcessor(image_processor=image_proc, tokenizer=tok, chat_template=QWEN2VL_CHAT_TEMPLATE)
    rope = shape.head_dim // 2  # mrope sections (temporal, height, width) must sum to head_dim / 2
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
            num_hidden_layers=shape.decoder_layers, num_attention_heads=shape.heads, num_key_value_heads=1,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                             "mrope_section": [rope - 2 * (rope * 3 // 8), rope * 3 // 8, rope * 3 // 8]},
            bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(
            depth=shape.vision_layers, embed_dim=shape.hidden, hidden_size=shape.hidden, num_heads=shape.heads,
            mlp_ratio=shape.intermediate // shape.hidden, patch_size=shape.patch_size, spatial_merge_size=2,
            temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model.eval(), processor
