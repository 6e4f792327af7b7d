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
    SiglipVisionConfig,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from vlmlib.data import VOCABULARY
from vlmlib.families.qwen2vl import image_only_processor_class
from vlmlib.models import RANDOM_WEIGHTS_MARKER

Qwen2VLImageOnlyProcessor = image_only_processor_class()


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
    vision_hidden: int = 0  # vision tower width (0: `hidden`)
    vision_intermediate: int = 0  # vision MLP width (0: `intermediate`)
    vision_heads: int = 0  # vision attention heads (0: `heads`)

    def vision(self) -> tuple[int, int, int]:
        """(width, MLP width, heads) of the vision tower."""
        return (
            self.vision_hidden or self.hidden,
            self.vision_intermediate or self.intermediate,
            self.vision_heads or self.heads,
        )


def word_tokenizer(
    specials: list[str], words: list[str], bos: str | None, eos: str, pad: str
) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*specials, *words, "\n"]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    # Specials must be *special* tokens, or the processors miscount image tokens.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken("\n", normalized=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>"
    )


def bpe_tokenizer(
    specials: list[str], words: list[str], bos: str | None, eos: str, pad: str, merges: int = 40
) -> PreTrainedTokenizerFast:
    """A real subword tokenizer, trained here offline: byte-level BPE as GPT-2's and Qwen2's (a space
    belongs to the word after it, every byte is a token), with only `merges` merges learnt from `words`
    so that most words are split into several tokens ("yellow" -> "y", "ell", "ow"): answers of several
    tokens, as real checkpoints' tokenizers give them. Deterministic for the same words."""
    from tokenizers import trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + len(specials) + merges,
        special_tokens=list(specials),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    corpus = [" ".join(words)] * 3 + [f"{a} {b}" for a, b in zip(words, words[1:])]
    tok.train_from_iterator(corpus, trainer)
    # Specials must be *special* tokens, or the processors miscount image tokens.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>"
    )


TOKENIZERS = {"word": word_tokenizer, "bpe": bpe_tokenizer}  # the `tokenizer=` of the tiny builders


def _tokenizer(kind: str):
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {kind!r}; use one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind]


def tiny_paligemma(
    shape: TinyShape = TinyShape(), seed: int = 0, vocabulary=VOCABULARY, tokenizer: str = "word"
):
    """(model, processor) of a random-weight PaliGemma: SigLIP tower, linear projector, Gemma decoder.
    `vocabulary`: the words of its tokenizer (default: the `shapes` vocabulary); `tokenizer`: "word" (one
    token a word) or "bpe" (a byte-level subword tokenizer, `bpe_tokenizer`)."""
    tok = _tokenizer(tokenizer)(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], list(vocabulary), "<bos>", "<eos>", "<pad>"
    )
    tok.image_token, tok.image_token_id = "<image>", tok.convert_tokens_to_ids("<image>")
    image_proc = SiglipImageProcessorPil(size={"height": shape.image_size, "width": shape.image_size})
    image_proc.image_seq_length = (shape.image_size // shape.patch_size) ** 2
    processor = PaliGemmaProcessor(image_processor=image_proc, tokenizer=tok)
    tok = processor.tokenizer  # now with PaliGemma's <loc>/<seg> tokens
    vision_hidden, vision_intermediate, vision_heads = shape.vision()
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=vision_intermediate,
            num_hidden_layers=shape.vision_layers,
            num_attention_heads=vision_heads,
            image_size=shape.image_size,
            patch_size=shape.patch_size,
            vision_use_head=False,
        ),
        text_config=GemmaConfig(
            vocab_size=len(tok),
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=shape.decoder_layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=1,
            head_dim=shape.head_dim,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        image_token_index=tok.image_token_id,
        vocab_size=len(tok),
        projection_dim=shape.hidden,
        hidden_size=shape.hidden,
    )
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model.eval(), processor


def tiny_qwen2vl(
    shape: TinyShape = TinyShape(), seed: int = 0, vocabulary=VOCABULARY, tokenizer: str = "word"
):
    """(model, processor) of a random-weight Qwen2-VL: its ViT with 2x2 patch merger, Qwen2 decoder.
    `vocabulary`: the words of its tokenizer (default: the `shapes` vocabulary); `tokenizer`: "word" or
    "bpe", as for `tiny_paligemma`."""
    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<unk>",
    ]
    tok = _tokenizer(tokenizer)(
        specials, [*vocabulary, "user", "assistant"], None, "<|im_end|>", "<|endoftext|>"
    )
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    side = shape.image_size
    image_proc = Qwen2VLImageProcessorPil(
        patch_size=shape.patch_size,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=side * side,
        max_pixels=side * side,
    )
    processor = Qwen2VLImageOnlyProcessor(
        image_processor=image_proc, tokenizer=tok, chat_template=QWEN2VL_CHAT_TEMPLATE
    )
    rope = shape.head_dim // 2  # mrope sections (temporal, height, width) must sum to head_dim / 2
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=shape.decoder_layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=1,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e4,
                "mrope_section": [rope - 2 * (rope * 3 // 8), rope * 3 // 8, rope * 3 // 8],
            },
            bos_token_id=None,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=shape.vision_layers,
            embed_dim=shape.vision()[0],
            hidden_size=shape.hidden,
            num_heads=shape.vision()[2],
            mlp_ratio=shape.vision()[1] // shape.vision()[0],
            patch_size=shape.patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model.eval(), processor


# ---------------------------------------------------------------- stand-ins for the real checkpoints
#
# Random-weight models with the structure of the paper's checkpoints: real special-token ids and
# vocabulary size, the real Qwen2-VL-Instruct chat template, the real image-processor settings
# (Qwen2-VL's min/max pixels and 14 px patches, PaliGemma's 448 px and 1,024 image tokens), the real
# layer counts, tied embeddings and grouped-query ratios. `size="tiny"` shrinks only the widths (for
# tests: seconds on a CPU); `size="full"` keeps them too (parameter counts equal the hub's, to the unit).
# Facts: /work/shared/notes/real-checkpoints.md. The tokenizer is word-level (the real ones are
# not available offline) with Qwen2's one-digit-per-token split and the real special-token ids.

QWEN2VL_INSTRUCT_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The hub configurations (decoder, vision tower) of the paper's checkpoints.
REAL_CONFIGS = {
    "qwen2vl-2b": dict(  # Qwen/Qwen2-VL-2B-Instruct: 2,208,985,600 parameters
        family="qwen2vl",
        layers=28,
        hidden=1536,
        heads=12,
        kv_heads=2,
        intermediate=8960,
        vocab=151936,
        rope_theta=1e6,
        mrope_section=(16, 24, 24),
        vision_layers=32,
        vision_hidden=1280,
        vision_heads=16,
        vision_mlp_ratio=4,
        patch=14,
        min_pixels=3136,
        max_pixels=12845056,
    ),
    "paligemma-3b-448": dict(  # google/paligemma-3b-pt-448: 2,924,351,216 parameters
        family="paligemma",
        layers=18,
        hidden=2048,
        heads=8,
        kv_heads=1,
        head_dim=256,
        intermediate=16384,
        vocab=257216,
        vision_layers=27,
        vision_hidden=1152,
        vision_heads=16,
        vision_intermediate=4304,
        patch=14,
        image_size=448,
    ),
}
STANDIN_NAMES = tuple(REAL_CONFIGS)
# Widths of the tiny stand-ins: heads and grouped-query ratios as the real ones, head sizes shrunk.
TINY_HEAD_DIM = 8
TINY_VISION_HIDDEN, TINY_VISION_HEADS = 32, 4

QWEN2VL_SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
PALIGEMMA_SPECIAL_IDS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<image>": 257152}
PALIGEMMA_NEWLINE_ID = 108
QWEN2VL_NEWLINE_ID = 198  # "Ċ" in Qwen2's byte-level vocabulary
PALIGEMMA_LOC_START, PALIGEMMA_SEG_START = 256000, 257024

# Words a stand-in can read: the shapes prompts, the system prompt, PaliGemma's task prefixes.
STANDIN_WORDS = list(
    dict.fromkeys(
        " ".join(
            [
                *VOCABULARY,
                "user assistant system You are a helpful answer en caption Describe the image",
                ". ? , ! : 0 1 2 3 4 5 6 7 8 9",
            ]
        )
        .replace("?", " ? ")
        .split()
    )
)


def _placed_tokenizer(
    placed: dict[str, int], specials: list[str], size: int, bos, eos, pad, unk
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose tokens sit at given ids; every other id below `size` is a filler
    token (`<filler_N>`) that text never produces. Digits are split one by one, as Qwen2's are."""
    by_id = {i: t for t, i in placed.items()}
    vocab = {by_id.get(i, f"<filler_{i}>"): i for i in range(size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if "\n" in placed:
        tok.add_tokens([AddedToken("\n", normalized=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk
    )


def _words_from(start: int, skip: set[int]) -> dict[str, int]:
    ids, i = {}, start
    for word in STANDIN_WORDS:
        while i in skip:
            i += 1
        ids[word] = i
        i += 1
    return ids


def standin(name: str, size: str = "tiny", seed: int = 0, depths: tuple[int, int] | None = None):
    """(model, processor) of a random-weight stand-in for a real checkpoint (names: STANDIN_NAMES).

    size "tiny": real depths, ids, templates and processor settings; widths shrunk (heads kept, head
    size 8). size "full": the hub's structure exactly (billions of parameters: build it on the meta
    device or with memory to spare; see scripts/full_standins.py). `depths` = (decoder layers,
    vision layers) instead of the real ones: a slice of the model at its real width, for benchmarks
    whose measure is per layer."""
    if name not in REAL_CONFIGS:
        raise ValueError(f"unknown stand-in {name!r}; known: {', '.join(STANDIN_NAMES)}")
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', not {size!r}")
    real = REAL_CONFIGS[name]
    if depths is not None:
        if min(depths) < 1:
            raise ValueError(f"depths must be at least one decoder and one vision layer, not {depths}")
        real = {**real, "layers": depths[0], "vision_layers": depths[1]}
    config, processor = standin_config(real, size == "full")
    torch.manual_seed(seed)
    model = standin_model_class(real)._from_config(config, attn_implementation="eager")
    return model.eval(), processor


def standin_config(real: dict, full: bool):
    """(config, processor) of a stand-in described by `real` (an entry of REAL_CONFIGS, maybe re-depthed)."""
    build = qwen2vl_standin_config if real["family"] == "qwen2vl" else paligemma_standin_config
    return build(real, full)


def standin_model_class(real: dict):
    return (
        Qwen2VLForConditionalGeneration if real["family"] == "qwen2vl" else PaliGemmaForConditionalGeneration
    )


def qwen2vl_standin_config(real: dict, full: bool):
    ids = {**QWEN2VL_SPECIAL_IDS, "\n": QWEN2VL_NEWLINE_ID}
    ids.update(_words_from(0, set(ids.values())))
    specials = list(QWEN2VL_SPECIAL_IDS)
    # Qwen2 has no <unk> (byte-level BPE); a word-level tokenizer needs one: the last filler id.
    ids["<unk>"] = real["vocab"] - 1
    tok = _placed_tokenizer(
        ids, [*specials, "<unk>"], real["vocab"], None, "<|im_end|>", "<|endoftext|>", "<unk>"
    )
    image_proc = Qwen2VLImageProcessorPil(
        patch_size=real["patch"],
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=real["min_pixels"],
        max_pixels=real["max_pixels"],
    )
    processor = Qwen2VLImageOnlyProcessor(
        image_processor=image_proc, tokenizer=tok, chat_template=QWEN2VL_INSTRUCT_CHAT_TEMPLATE
    )
    head_dim = real["hidden"] // real["heads"] if full else TINY_HEAD_DIM
    hidden = real["heads"] * head_dim
    mrope = list(real["mrope_section"]) if full else [1, 1, 2]  # sums to head_dim / 2 (real: 1/4, 3/8, 3/8)
    vision_hidden, vision_heads = (
        (real["vision_hidden"], real["vision_heads"]) if full else (TINY_VISION_HIDDEN, TINY_VISION_HEADS)
    )
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=real["vocab"],
            hidden_size=hidden,
            intermediate_size=real["intermediate"] if full else 4 * hidden,
            num_hidden_layers=real["layers"],
            num_attention_heads=real["heads"],
            num_key_value_heads=real["kv_heads"],
            rms_norm_eps=1e-6,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": real["rope_theta"],
                "mrope_section": mrope,
            },
            bos_token_id=151643,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=real["vision_layers"],
            embed_dim=vision_hidden,
            hidden_size=hidden,
            num_heads=vision_heads,
            mlp_ratio=real["vision_mlp_ratio"],
            patch_size=real["patch"],
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    return config, processor


def paligemma_standin_config(real: dict, full: bool):
    ids = {**PALIGEMMA_SPECIAL_IDS, "\n": PALIGEMMA_NEWLINE_ID}
    ids.update({f"<loc{i:0>4}>": PALIGEMMA_LOC_START + i for i in range(1024)})
    ids.update({f"<seg{i:0>3}>": PALIGEMMA_SEG_START + i for i in range(128)})
    ids.update(_words_from(4, set(ids.values())))
    tokenizer_size = PALIGEMMA_SPECIAL_IDS["<image>"] + 1  # 257153; the model's 257216 rows pad it
    tok = _placed_tokenizer(
        ids,
        ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"],
        tokenizer_size,
        "<bos>",
        "<eos>",
        "<pad>",
        "<unk>",
    )
    tok.image_token, tok.image_token_id = "<image>", ids["<image>"]
    side = real["image_size"]
    image_proc = SiglipImageProcessorPil(
        size={"height": side, "width": side}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    image_proc.image_seq_length = (side // real["patch"]) ** 2
    processor = PaliGemmaProcessor(image_processor=image_proc, tokenizer=tok)  # loc/seg tokens already placed
    if len(processor.tokenizer) != tokenizer_size:
        raise AssertionError(
            f"stand-in tokenizer has {len(processor.tokenizer)} tokens, expected {tokenizer_size}"
        )
    head_dim = real["head_dim"] if full else TINY_HEAD_DIM
    hidden = real["hidden"] if full else real["heads"] * head_dim
    vision_hidden, vision_heads = (
        (real["vision_hidden"], real["vision_heads"]) if full else (TINY_VISION_HIDDEN, TINY_VISION_HEADS)
    )
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=real["vision_intermediate"] if full else 4 * vision_hidden,
            num_hidden_layers=real["vision_layers"],
            num_attention_heads=vision_heads,
            image_size=side,
            patch_size=real["patch"],
            projection_dim=hidden,
            vision_use_head=False,
        ),
        text_config=GemmaConfig(
            vocab_size=real["vocab"],
            hidden_size=hidden,
            intermediate_size=real["intermediate"] if full else 8 * hidden,
            num_hidden_layers=real["layers"],
            num_attention_heads=real["heads"],
            num_key_value_heads=real["kv_heads"],
            head_dim=head_dim,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=1,
        ),
        image_token_index=ids["<image>"],
        vocab_size=real["vocab"],
        projection_dim=hidden,
        hidden_size=hidden,
    )
    return config, processor


def save_standin(name: str, folder, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.bfloat16):
    """Write a stand-in to `folder` with save_pretrained, as a downloaded checkpoint would be (bf16,
    like the hub's weights); load it with `vlmlib.load_model(folder)`."""
    model, processor = standin(name, size, seed)
    setattr(model.config, RANDOM_WEIGHTS_MARKER, True)  # load_model then labels it untrained
    model.to(dtype).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
