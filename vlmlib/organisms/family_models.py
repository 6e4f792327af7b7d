"""Tiny random-weight models of the families beyond PaliGemma and Qwen2-VL, built offline with transformers'
own classes (issue 25): LLaVA-1.5, Qwen2.5-VL, Qwen3-VL (DeepStack), Gemma 3, Idefics3 (SmolVLM) with image
splitting, LLaVA-OneVision (anyres).

Each builder returns (model, processor) like `builders.tiny_paligemma`: a word-level tokenizer over the
`shapes` vocabulary with the family's special tokens, the family's real processor class (the PIL image
processors: no torchvision), the checkpoint's chat template, and a small config of the real architecture
(eight decoder layers of width 128, four vision-tower layers, 64 x 64 px images). They are for tests
only (random weights; `vlmlib.organisms` names them `<family>-random`).
"""

from __future__ import annotations

import torch

from vlmlib.data import VOCABULARY

from .builders import TinyShape, word_tokenizer


def with_bos(tok):
    """The tokenizer with its BOS token put before every encoded text (unless add_special_tokens=False), as
    Llama's and Gemma's tokenizers do (the word-level tokenizer adds nothing by itself)."""
    from tokenizers import processors

    bos = tok.bos_token
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))]
    )
    return tok


# llava-hf/llava-1.5-7b-hf's chat template (processor's chat_template.json): the images of a turn first,
# each as "<image>\n", then its texts each followed by a space; "ASSISTANT:" as generation prompt.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def tiny_llava(shape: TinyShape = TinyShape(), seed: int = 0, vocabulary=VOCABULARY):
    """(model, processor) of a random-weight LLaVA-1.5: CLIP tower (its CLS token dropped, features from
    its second-to-last layer, as llava-1.5 reads them: 5 layers, 4 read), two-layer MLP projector, Llama
    decoder; (image_size / patch_size)^2 = 64 image tokens."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = with_bos(
        word_tokenizer(
            ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
            [*vocabulary, "USER:", "ASSISTANT:"],
            "<s>",
            "</s>",
            "<pad>",
        )
    )
    side = shape.image_size
    image_proc = CLIPImageProcessorPil(
        size={"height": side, "width": side},
        crop_size={"height": side, "width": side},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = LlavaProcessor(
        image_processor=image_proc,
        tokenizer=tok,
        patch_size=shape.patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's CLS, which "default" drops
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    vision_hidden, vision_intermediate, vision_heads = shape.vision()
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=vision_intermediate,
            # one more than the layers the projector reads (it reads the second-to-last's output)
            num_hidden_layers=shape.vision_layers + 1,
            num_attention_heads=vision_heads,
            image_size=side,
            patch_size=shape.patch_size,
            projection_dim=shape.hidden,
        ),
        text_config=LlamaConfig(
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
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model.eval(), processor


def qwen_tokenizer(vocabulary=VOCABULARY):
    """A word-level tokenizer with Qwen2's chat and vision special tokens ("user", "assistant", "system"
    as words)."""
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
    tok = word_tokenizer(
        specials, [*vocabulary, "user", "assistant", "system"], None, "<|im_end|>", "<|endoftext|>"
    )
    return tok, {s: tok.convert_tokens_to_ids(s) for s in specials}


def tiny_qwen25vl(shape: TinyShape = TinyShape(), seed: int = 0, vocabulary=VOCABULARY):
    """(model, processor) of a random-weight Qwen2.5-VL: its windowed ViT (2 x 2 merged patches per window
    side, every other block attending fully, as blocks 7, 15, 23, 31 of 32 do), 2 x 2 patch merger,
    Qwen2 decoder with multimodal rotary positions; 16 image tokens per 64 px image."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmlib.families.qwen2_5_vl import image_only_processor_class

    from .builders import QWEN2VL_INSTRUCT_CHAT_TEMPLATE

    tok, ids = qwen_tokenizer(vocabulary)
    side = shape.image_size
    image_proc = Qwen2VLImageProcessorPil(
        patch_size=shape.patch_size,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=side * side,
        max_pixels=side * side,
    )
    processor = image_only_processor_class()(
        image_processor=image_proc, tokenizer=tok, chat_template=QWEN2VL_INSTRUCT_CHAT_TEMPLATE
    )
    rope = shape.head_dim // 2  # mrope sections (temporal, height, width) must sum to head_dim / 2
    vision_hidden, vision_intermediate, vision_heads = shape.vision()
    config = Qwen2_5_VLConfig(
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
            hidden_size=vision_hidden,
            intermediate_size=vision_intermediate,
            num_heads=vision_heads,
            out_hidden_size=shape.hidden,
            patch_size=shape.patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=4 * shape.patch_size,  # 2 x 2 merged patches per window (real: 112 px = 4 x 28)
            fullatt_block_indexes=list(range(1, shape.vision_layers, 2)),
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model.eval(), processor


# Qwen/Qwen3-VL-2B-Instruct's chat template (chat_template.json; the same in every Qwen3-VL Instruct
# checkpoint), without its tool-calling branches: a system turn only when a system message is given (no
# default one, unlike Qwen2-VL-Instruct's), images as <|vision_start|><|image_pad|><|vision_end|>,
# "<|im_start|>assistant\n" as the generation prompt.
QWEN3VL_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if message.role == \"user\" %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == \"assistant\" %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content_item in message.content %}{%- if 'text' in content_item %}{{- content_item.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def tiny_qwen3vl(shape: TinyShape = TinyShape(), seed: int = 0, vocabulary=VOCABULARY):
    """(model, processor) of a random-weight Qwen3-VL: its ViT on packed patches (learned position embeddings
    interpolated to the image's grid), 2 x 2 patch merger, Qwen3 decoder with interleaved multimodal rotary
    positions, and DeepStack: the outputs of vision blocks 0, 1 and 2 of 4 (the real 2B model: 5, 11, 17 of
    24), each through a merger of its own, added at the image positions after decoder layers 0, 1 and 2;
    16 image tokens per 64 px image."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmlib.families.qwen3vl import image_only_processor_class

    tok, ids = qwen_tokenizer(vocabulary)
    side = shape.image_size
    image_proc = Qwen2VLImageProcessorPil(
        patch_size=shape.patch_size,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": side * side, "longest_edge": side * side},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    processor = image_only_processor_class()(
        image_processor=image_proc, tokenizer=tok, chat_template=QWEN3VL_CHAT_TEMPLATE
    )
    rope = shape.head_dim // 2  # mrope sections (temporal, height, width) sum to head_dim / 2: [24, 20, 20]
    height = rope * 5 // 16
    vision_hidden, vision_intermediate, vision_heads = shape.vision()
    grid = side // shape.patch_size
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=shape.decoder_layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=1,
            head_dim=shape.head_dim,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e4,
                "mrope_section": [rope - 2 * height, height, height],
                "mrope_interleaved": True,
            },
            bos_token_id=None,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=shape.vision_layers,
            hidden_size=vision_hidden,
            intermediate_size=vision_intermediate,
            num_heads=vision_heads,
            out_hidden_size=shape.hidden,
            patch_size=shape.patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=grid * grid,  # one learned embedding per patch of a 64 px image
            deepstack_visual_indexes=list(range(min(3, shape.vision_layers))),
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model.eval(), processor


# google/gemma-3-4b-it's chat template (tokenizer_config.json): the first user turn carries a system
# message's text; images are "<start_of_image>", texts trimmed; "<start_of_turn>model\n" as generation prompt.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    '{%- else -%}{%- set first_user_prefix = "" -%}{%- set loop_messages = messages -%}{%- endif -%}'
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}"
    "{%- else -%}{{ raise_exception('Invalid content type') }}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)


def tiny_gemma3(shape: TinyShape = TinyShape(), seed: int = 0, vocabulary=VOCABULARY):
    """(model, processor) of a random-weight Gemma 3: SigLIP tower, a projector that average-pools 2 x 2
    patches per token (the real one pools 4 x 4), Gemma 3 decoder with post-sublayer norms whose layers
    attend in a 16-token sliding window five times for every global layer; 16 image tokens per image."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        PreTrainedTokenizerFast,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    images = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    words = word_tokenizer([*specials, *images], [*vocabulary, "user", "model"], "<bos>", "<eos>", "<pad>")
    tok = with_bos(
        PreTrainedTokenizerFast(
            tokenizer_object=words._tokenizer,
            bos_token="<bos>",
            eos_token="<eos>",
            pad_token="<pad>",
            unk_token="<unk>",
            extra_special_tokens=dict(zip(("boi_token", "eoi_token", "image_token"), images)),
        )
    )
    side = shape.image_size
    tokens_per_side = side // shape.patch_size // 2
    image_proc = Gemma3ImageProcessorPil(
        size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = Gemma3Processor(
        image_processor=image_proc,
        tokenizer=tok,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=tokens_per_side**2,
    )
    vision_hidden, vision_intermediate, vision_heads = shape.vision()
    ids = {t: tok.convert_tokens_to_ids(t) for t in [*specials, *images]}
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=vision_intermediate,
            num_hidden_layers=shape.vision_layers,
            num_attention_heads=vision_heads,
            image_size=side,
            patch_size=shape.patch_size,
            vision_use_head=False,
        ),
        text_config=Gemma3TextConfig(
            vocab_size=len(tok),
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=shape.decoder_layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=1,
            head_dim=shape.head_dim,
            query_pre_attn_scalar=shape.head_dim,
            sliding_window=16,
            pad_token_id=ids["<pad>"],
            bos_token_id=ids["<bos>"],
            eos_token_id=ids["<eos>"],
        ),
        mm_tokens_per_image=tokens_per_side**2,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration._from_config(config, attn_implementation="eager")
    return random_gemma3_projector(model).eval(), processor


def random_gemma3_projector(model):
    """Gemma 3's projector weight drawn like the other linear maps: transformers initialises it to zeros,
    which would give every image token a zero embedding (the decoder would never see the image)."""
    if model.config.model_type == "gemma3":
        weight = model.model.multi_modal_projector.mm_input_projection_weight
        with torch.no_grad():
            weight.normal_(0.0, model.config.text_config.initializer_range)
    return model


# HuggingFaceTB/SmolVLM-Instruct's chat template (as Idefics3-8B-Llama3's, whose first token is
# <|begin_of_text|>): role names capitalised, ":" before a leading image, ": " before leading text.
IDEFICS3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def tiny_idefics3(shape: TinyShape = TinyShape(), seed: int = 0, vocabulary=VOCABULARY):
    """(model, processor) of a random-weight Idefics3 (SmolVLM) with image splitting on, as the checkpoints
    run it: each image is resized to 2 x `image_size` px, cut into 2 x 2 crops of `image_size` px, plus the
    whole image shrunk to one crop: 5 rows of the SigLIP-style tower per sample; the connector pixel-shuffles
    2 x 2 patches per token (16 tokens per crop, 80 image tokens per sample); a Llama decoder."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    grid = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    specials = [
        "<|im_start|>",
        "<|endoftext|>",
        "<unk>",
        "<pad>",
        "<fake_token_around_image>",
        "<image>",
        "<end_of_utterance>",
        "<global-img>",
        *grid,
    ]
    tok = with_bos(
        word_tokenizer(
            specials,
            [*vocabulary, "User:", "Assistant:", "System:"],
            "<|im_start|>",
            "<end_of_utterance>",
            "<pad>",
        )
    )
    side, scale = shape.image_size, 2
    image_proc = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * side},
        max_image_size={"longest_edge": side},
        do_image_splitting=True,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    seq_len = (side // shape.patch_size) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=image_proc, tokenizer=tok, image_seq_len=seq_len, chat_template=IDEFICS3_CHAT_TEMPLATE
    )
    vision_hidden, vision_intermediate, vision_heads = shape.vision()
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=vision_intermediate,
            num_hidden_layers=shape.vision_layers,
            num_attention_heads=vision_heads,
            image_size=side,
            patch_size=shape.patch_size,
        ),
        text_config=LlamaConfig(
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
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model.eval(), processor


# ---------------------------------------------------------------- stand-ins of one real checkpoint per family
#
# Random-weight models with the structure of one hub checkpoint of each family, as builders.standin makes
# them for the paper's two: the real depths, widths (size "full"), special-token ids, vocabulary size, chat
# template and image-processor settings, with a word-level tokenizer whose tokens sit at the real ids
# (every other id a filler that text never produces; digits split one by one, as all four real tokenizers
# split them). size "tiny" keeps the depths, ids, template and processor and shrinks the widths (heads kept,
# head size 8). Where the numbers come from: the checkpoints' config.json, tokenizer and processor files as
# published on the hub (transcribed from memory, offline: no network here); each full-size structure's
# parameter count equals the hub's model-size figure to the unit (tests/test_families.py), which confirms
# the widths, depths and vocabulary sizes. Ids marked "(memory)" below are not confirmed by any count or
# by transformers' source; the others are transformers' own defaults for the checkpoint.

FAMILY_STANDINS = {
    "llava-1.5-7b": dict(  # llava-hf/llava-1.5-7b-hf: Vicuna-7B v1.5 + CLIP ViT-L/14-336
        family="llava",
        hub="llava-hf/llava-1.5-7b-hf",
        parameters=7_063_427_072,
        layers=32,
        hidden=4096,
        heads=32,
        kv_heads=32,
        intermediate=11008,
        vocab=32064,  # 32000 + <image>, <pad>, padded to a multiple of 64
        vision_layers=24,
        vision_hidden=1024,
        vision_heads=16,
        vision_intermediate=4096,
        patch=14,
        image_size=336,
        # LlavaConfig's defaults (transformers source): <image> 32000; Llama's <unk> 0, <s> 1, </s> 2; <pad>
        # 32001 (the checkpoint's pad_token_id); "\n" is Llama's byte token <0x0A>, 13
        ids={"<unk>": 0, "<s>": 1, "</s>": 2, "\n": 13, "<image>": 32000, "<pad>": 32001},
    ),
    "qwen2.5-vl-3b": dict(  # Qwen/Qwen2.5-VL-3B-Instruct
        family="qwen25vl",
        hub="Qwen/Qwen2.5-VL-3B-Instruct",
        parameters=3_754_622_976,
        layers=36,
        hidden=2048,
        heads=16,
        kv_heads=2,
        intermediate=11008,
        vocab=151936,
        rope_theta=1e6,
        mrope_section=(16, 24, 24),
        vision_layers=32,
        vision_hidden=1280,
        vision_heads=16,
        vision_intermediate=3420,
        window_size=112,
        fullatt_block_indexes=(7, 15, 23, 31),
        patch=14,
        min_pixels=3136,
        max_pixels=12845056,
        # Qwen2-VL's ids (builders.QWEN2VL_SPECIAL_IDS; Qwen2_5_VLConfig's defaults agree)
    ),
    "qwen3-vl-2b": dict(  # Qwen/Qwen3-VL-2B-Instruct
        family="qwen3vl",
        hub="Qwen/Qwen3-VL-2B-Instruct",
        # the hub's safetensors total (its API's `safetensors.total`, as public code that pins the checkpoint
        # asserts it); the structure below gives it to the unit with the word embeddings tied
        parameters=2_127_532_032,
        layers=28,
        hidden=2048,
        heads=16,
        kv_heads=8,
        head_dim=128,
        intermediate=6144,
        vocab=151936,
        rope_theta=5e6,
        mrope_section=(24, 20, 20),  # interleaved (mrope_interleaved: true)
        max_position_embeddings=262144,
        vision_layers=24,
        vision_hidden=1024,
        vision_heads=16,
        vision_intermediate=4096,
        deepstack_visual_indexes=(5, 11, 17),
        num_position_embeddings=2304,  # a 48 x 48 grid of learned position embeddings, interpolated
        patch=16,
        # preprocessor_config.json: pixel budget 256 x 256 to 4096 x 4096, mean and std 0.5
        min_pixels=65536,
        max_pixels=16777216,
        # Qwen2-VL's ids (builders.QWEN2VL_SPECIAL_IDS; Qwen3VLConfig's defaults agree: <|image_pad|> 151655,
        # <|video_pad|> 151656, <|vision_start|> 151652, <|vision_end|> 151653; text_config bos 151643,
        # eos 151645)
    ),
    "gemma-3-4b": dict(  # google/gemma-3-4b-it
        family="gemma3",
        hub="google/gemma-3-4b-it",
        parameters=4_300_079_472,
        layers=34,
        hidden=2560,
        heads=8,
        kv_heads=4,
        head_dim=256,
        intermediate=10240,
        vocab=262208,
        sliding_window=1024,
        vision_layers=27,
        vision_hidden=1152,
        vision_heads=16,
        vision_intermediate=4304,
        patch=14,
        image_size=896,
        tokens_per_image=256,
        # Gemma3Config / Gemma3TextConfig defaults: <pad> 0, <eos> 1, <bos> 2, <start_of_image> 255999,
        # <end_of_image> 256000, <image_soft_token> 262144; <unk> 3, <start_of_turn> 105, <end_of_turn> 106,
        # "\n" 107 (memory)
        ids={
            "<pad>": 0,
            "<eos>": 1,
            "<bos>": 2,
            "<unk>": 3,
            "<start_of_turn>": 105,
            "<end_of_turn>": 106,
            "\n": 107,
            "<start_of_image>": 255999,
            "<end_of_image>": 256000,
            "<image_soft_token>": 262144,
        },
    ),
    "smolvlm-instruct": dict(  # HuggingFaceTB/SmolVLM-Instruct: SmolLM2-1.7B + SigLIP-So400m at 384 px
        family="idefics3",
        hub="HuggingFaceTB/SmolVLM-Instruct",
        parameters=2_246_272_880,
        layers=24,
        hidden=2048,
        heads=32,
        kv_heads=32,
        intermediate=8192,
        vocab=49155,  # SmolLM2's 49152 + the three tokens Idefics3Processor adds
        rope_theta=273768.0,
        vision_layers=27,
        vision_hidden=1152,
        vision_heads=16,
        vision_intermediate=4304,
        patch=14,
        image_size=384,
        scale_factor=3,  # 27 x 27 patches -> 81 tokens per crop
        longest_edge=4 * 384,  # split into up to 4 x 4 crops (memory)
        # SmolLM2's <|endoftext|> 0, <|im_start|> 1 (its BOS), <|im_end|> 2, "\n" 198 (memory); the added
        # <fake_token_around_image> 49152, <image> 49153 (image_token_id), <end_of_utterance> 49154, in the
        # order Idefics3Processor adds them. The row/column and <global-img> tags are text in the real
        # tokenizer (several tokens each); here they are single tokens at ids of their own.
        ids={
            "<|endoftext|>": 0,
            "<|im_start|>": 1,
            "<|im_end|>": 2,
            "\n": 198,
            "<fake_token_around_image>": 49152,
            "<image>": 49153,
            "<end_of_utterance>": 49154,
        },
    ),
    "llava-onevision-0.5b": dict(  # llava-hf/llava-onevision-qwen2-0.5b-ov-hf: Qwen2-0.5B + SigLIP, 26 layers
        family="llavaonevision",
        hub="llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        parameters=893_675_552,  # the hub shows 894M (to the million only: the unit is not confirmed)
        layers=24,
        hidden=896,
        heads=14,
        kv_heads=2,
        intermediate=4864,
        vocab=152000,
        rope_theta=1e6,
        vision_layers=26,
        vision_hidden=1152,
        vision_heads=16,
        vision_intermediate=4304,
        patch=14,
        image_size=384,
        # LlavaOnevisionConfig's defaults: <image> 151646, <video> 151647; Qwen2's <|endoftext|> 151643,
        # <|im_start|> 151644, <|im_end|> 151645, "\n" 198
        ids={
            "<|endoftext|>": 151643,
            "<|im_start|>": 151644,
            "<|im_end|>": 151645,
            "<image>": 151646,
            "<video>": 151647,
            "\n": 198,
        },
    ),
}
FAMILY_STANDIN_NAMES = tuple(FAMILY_STANDINS)
TINY_HEAD_DIM, TINY_VISION_HIDDEN, TINY_VISION_HEADS = 8, 32, 4


def placed_tokenizer(placed: dict[str, int], specials: list[str], size: int, bos, eos, pad, unk, extra=None):
    """A word-level tokenizer whose tokens sit at given ids; every other id below `size` is a filler token
    (`<filler_N>`) that text never produces. Digits are split one by one. `extra`: named special tokens
    (Gemma 3's boi_token, ...)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

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
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        **({"extra_special_tokens": extra} if extra else {}),
    )


def placed_words(words, start: int, taken: set[int]) -> dict[str, int]:
    """Consecutive ids from `start` for `words`, skipping the ids in `taken`."""
    ids, i = {}, start
    for word in dict.fromkeys(words):
        while i in taken:
            i += 1
        ids[word] = i
        i += 1
    return ids


def _widths(real: dict, full: bool) -> dict:
    """The decoder's and tower's widths: the real ones, or tiny ones with the real head counts."""
    head_dim = real.get("head_dim", real["hidden"] // real["heads"]) if full else TINY_HEAD_DIM
    return dict(
        head_dim=head_dim,
        hidden=real["hidden"] if full else real["heads"] * head_dim,
        intermediate=real["intermediate"] if full else 4 * real["heads"] * head_dim,
        vision_hidden=real["vision_hidden"] if full else TINY_VISION_HIDDEN,
        vision_heads=real["vision_heads"] if full else TINY_VISION_HEADS,
        vision_intermediate=real["vision_intermediate"] if full else 4 * TINY_VISION_HIDDEN,
    )


def llava_standin(real: dict, full: bool):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from .builders import STANDIN_WORDS

    ids = dict(real["ids"])
    ids.update(placed_words([*STANDIN_WORDS, "USER", "ASSISTANT"], 3, set(ids.values())))
    tok = with_bos(
        placed_tokenizer(
            ids, ["<unk>", "<s>", "</s>", "<image>", "<pad>"], 32002, "<s>", "</s>", "<pad>", "<unk>"
        )
    )
    side, w = real["image_size"], _widths(real, full)
    image_proc = CLIPImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = LlavaProcessor(
        image_processor=image_proc,
        tokenizer=tok,
        patch_size=real["patch"],
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=w["vision_hidden"],
            intermediate_size=w["vision_intermediate"],
            num_hidden_layers=real["vision_layers"],
            num_attention_heads=w["vision_heads"],
            image_size=side,
            patch_size=real["patch"],
            projection_dim=768,
        ),
        text_config=LlamaConfig(
            vocab_size=real["vocab"],
            hidden_size=w["hidden"],
            intermediate_size=w["intermediate"],
            num_hidden_layers=real["layers"],
            num_attention_heads=real["heads"],
            num_key_value_heads=real["kv_heads"],
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            pad_token_id=ids["<pad>"],
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
        ),
        image_token_index=ids["<image>"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    return LlavaForConditionalGeneration, config, processor


def qwen25vl_standin(real: dict, full: bool):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmlib.families.qwen2_5_vl import image_only_processor_class

    from .builders import (
        QWEN2VL_INSTRUCT_CHAT_TEMPLATE,
        QWEN2VL_NEWLINE_ID,
        QWEN2VL_SPECIAL_IDS,
        STANDIN_WORDS,
    )

    ids = {**QWEN2VL_SPECIAL_IDS, "\n": QWEN2VL_NEWLINE_ID}
    ids.update(placed_words(STANDIN_WORDS, 0, set(ids.values())))
    ids["<unk>"] = real["vocab"] - 1  # Qwen2 has no <unk> (byte-level BPE); a word-level tokenizer needs one
    specials = [*QWEN2VL_SPECIAL_IDS, "<unk>"]
    tok = placed_tokenizer(ids, specials, real["vocab"], None, "<|im_end|>", "<|endoftext|>", "<unk>")
    image_proc = Qwen2VLImageProcessorPil(
        patch_size=real["patch"],
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=real["min_pixels"],
        max_pixels=real["max_pixels"],
    )
    processor = image_only_processor_class()(
        image_processor=image_proc, tokenizer=tok, chat_template=QWEN2VL_INSTRUCT_CHAT_TEMPLATE
    )
    w = _widths(real, full)
    mrope = list(real["mrope_section"]) if full else [1, 1, 2]  # sums to head_dim / 2
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=real["vocab"],
            hidden_size=w["hidden"],
            intermediate_size=w["intermediate"],
            num_hidden_layers=real["layers"],
            num_attention_heads=real["heads"],
            num_key_value_heads=real["kv_heads"],
            rms_norm_eps=1e-6,
            max_position_embeddings=128000,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": real["rope_theta"],
                "mrope_section": mrope,
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=real["vision_layers"],
            hidden_size=w["vision_hidden"],
            intermediate_size=w["vision_intermediate"],
            num_heads=w["vision_heads"],
            out_hidden_size=w["hidden"],
            patch_size=real["patch"],
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=real["window_size"],
            fullatt_block_indexes=list(real["fullatt_block_indexes"]),
            tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    return Qwen2_5_VLForConditionalGeneration, config, processor


def qwen3vl_standin(real: dict, full: bool):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmlib.families.qwen3vl import image_only_processor_class

    from .builders import QWEN2VL_NEWLINE_ID, QWEN2VL_SPECIAL_IDS, STANDIN_WORDS

    ids = {**QWEN2VL_SPECIAL_IDS, "\n": QWEN2VL_NEWLINE_ID}
    ids.update(placed_words(STANDIN_WORDS, 0, set(ids.values())))
    ids["<unk>"] = real["vocab"] - 1  # Qwen3 has no <unk> (byte-level BPE); a word-level tokenizer needs one
    specials = [*QWEN2VL_SPECIAL_IDS, "<unk>"]
    tok = placed_tokenizer(ids, specials, real["vocab"], None, "<|im_end|>", "<|endoftext|>", "<unk>")
    image_proc = Qwen2VLImageProcessorPil(
        patch_size=real["patch"],
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": real["min_pixels"], "longest_edge": real["max_pixels"]},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    processor = image_only_processor_class()(
        image_processor=image_proc, tokenizer=tok, chat_template=QWEN3VL_CHAT_TEMPLATE
    )
    w = _widths(real, full)
    # sums to head_dim / 2 (64 at full size, 4 for the tiny head size of 8)
    mrope = list(real["mrope_section"]) if full else [2, 1, 1]
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=real["vocab"],
            hidden_size=w["hidden"],
            intermediate_size=w["intermediate"],
            num_hidden_layers=real["layers"],
            num_attention_heads=real["heads"],
            num_key_value_heads=real["kv_heads"],
            head_dim=w["head_dim"],
            rms_norm_eps=1e-6,
            max_position_embeddings=real["max_position_embeddings"],
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": real["rope_theta"],
                "mrope_section": mrope,
                "mrope_interleaved": True,
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=None,
        ),
        vision_config=dict(
            depth=real["vision_layers"],
            hidden_size=w["vision_hidden"],
            intermediate_size=w["vision_intermediate"],
            num_heads=w["vision_heads"],
            out_hidden_size=w["hidden"],
            patch_size=real["patch"],
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=real["num_position_embeddings"],
            deepstack_visual_indexes=list(real["deepstack_visual_indexes"]),
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    return Qwen3VLForConditionalGeneration, config, processor


def gemma3_standin(real: dict, full: bool):
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from .builders import STANDIN_WORDS

    ids = dict(real["ids"])
    ids.update(placed_words([*STANDIN_WORDS, "user", "model"], 4, set(ids.values())))
    images = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    specials = [t for t in real["ids"] if t != "\n"]
    tok = with_bos(
        placed_tokenizer(
            ids,
            specials,
            ids["<image_soft_token>"] + 1,  # 262145; the model's 262208 rows pad it
            "<bos>",
            "<eos>",
            "<pad>",
            "<unk>",
            extra=dict(zip(("boi_token", "eoi_token", "image_token"), images)),
        )
    )
    side, w = real["image_size"], _widths(real, full)
    image_proc = Gemma3ImageProcessorPil(
        size={"height": side, "width": side}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = Gemma3Processor(
        image_processor=image_proc,
        tokenizer=tok,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=real["tokens_per_image"],
    )
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(
            hidden_size=w["vision_hidden"],
            intermediate_size=w["vision_intermediate"],
            num_hidden_layers=real["vision_layers"],
            num_attention_heads=w["vision_heads"],
            image_size=side,
            patch_size=real["patch"],
            vision_use_head=False,
        ),
        text_config=Gemma3TextConfig(
            vocab_size=real["vocab"],
            hidden_size=w["hidden"],
            intermediate_size=w["intermediate"],
            num_hidden_layers=real["layers"],
            num_attention_heads=real["heads"],
            num_key_value_heads=real["kv_heads"],
            head_dim=w["head_dim"],
            query_pre_attn_scalar=w["head_dim"],
            sliding_window=real["sliding_window"],
            rope_parameters={
                "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
            pad_token_id=ids["<pad>"],
            bos_token_id=ids["<bos>"],
            eos_token_id=ids["<eos>"],
        ),
        mm_tokens_per_image=real["tokens_per_image"],
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    return Gemma3ForConditionalGeneration, config, processor


def idefics3_standin(real: dict, full: bool):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    from .builders import STANDIN_WORDS

    ids = dict(real["ids"])
    tags = ["<global-img>", *(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))]
    words = [*STANDIN_WORDS, "User", "Assistant", "System", *tags]  # ":" is a word of its own
    ids.update(placed_words(words, 3, set(ids.values())))
    specials = [t for t in real["ids"] if t != "\n"] + tags
    tok = with_bos(
        placed_tokenizer(
            ids, specials, real["vocab"], "<|im_start|>", "<end_of_utterance>", "<|im_end|>", "<|endoftext|>"
        )
    )
    side, w = real["image_size"], _widths(real, full)
    image_proc = Idefics3ImageProcessorPil(
        size={"longest_edge": real["longest_edge"]},
        max_image_size={"longest_edge": side},
        do_image_splitting=True,
        resample=1,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    processor = Idefics3Processor(
        image_processor=image_proc,
        tokenizer=tok,
        image_seq_len=(side // real["patch"]) ** 2 // real["scale_factor"] ** 2,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(
            hidden_size=w["vision_hidden"],
            intermediate_size=w["vision_intermediate"],
            num_hidden_layers=real["vision_layers"],
            num_attention_heads=w["vision_heads"],
            image_size=side,
            patch_size=real["patch"],
        ),
        text_config=LlamaConfig(
            vocab_size=real["vocab"],
            hidden_size=w["hidden"],
            intermediate_size=w["intermediate"],
            num_hidden_layers=real["layers"],
            num_attention_heads=real["heads"],
            num_key_value_heads=real["kv_heads"],
            rms_norm_eps=1e-5,
            max_position_embeddings=16384,
            rope_parameters={"rope_type": "default", "rope_theta": real["rope_theta"]},
            pad_token_id=ids["<|im_end|>"],
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<end_of_utterance>"],
        ),
        image_token_id=ids["<image>"],
        scale_factor=real["scale_factor"],
        tie_word_embeddings=False,
        pad_token_id=ids["<|im_end|>"],
    )
    return Idefics3ForConditionalGeneration, config, processor


def llavaonevision_standin(real: dict, full: bool):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from vlmlib.families.llava_onevision import image_only_processor_class

    from .builders import STANDIN_WORDS

    ids = dict(real["ids"])
    ids.update(placed_words([*STANDIN_WORDS, "user", "assistant", "system"], 0, set(ids.values())))
    ids["<unk>"] = real["vocab"] - 1  # Qwen2 has no <unk> (byte-level BPE); a word-level tokenizer needs one
    specials = [t for t in real["ids"] if t != "\n"] + ["<unk>"]
    tok = placed_tokenizer(ids, specials, real["vocab"], None, "<|im_end|>", "<|endoftext|>", "<unk>")
    side, w = real["image_size"], _widths(real, full)
    image_proc = LlavaOnevisionImageProcessorPil(
        size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )  # the class's 36 pinpoint grids, 1 x 1 to 6 x 6 crops of 384 px
    processor = image_only_processor_class()(
        image_processor=image_proc,
        tokenizer=tok,
        num_image_tokens=(side // real["patch"]) ** 2,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=w["vision_hidden"],
            intermediate_size=w["vision_intermediate"],
            num_hidden_layers=real["vision_layers"],
            num_attention_heads=w["vision_heads"],
            image_size=side,
            patch_size=real["patch"],
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=real["vocab"],
            hidden_size=w["hidden"],
            intermediate_size=w["intermediate"],
            num_hidden_layers=real["layers"],
            num_attention_heads=real["heads"],
            num_key_value_heads=real["kv_heads"],
            rope_parameters={"rope_type": "default", "rope_theta": real["rope_theta"]},
            tie_word_embeddings=True,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        image_grid_pinpoints=image_proc.image_grid_pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=True,
    )
    return LlavaOnevisionForConditionalGeneration, config, processor


STANDIN_BUILDERS = {
    "llava": llava_standin,
    "qwen25vl": qwen25vl_standin,
    "qwen3vl": qwen3vl_standin,
    "gemma3": gemma3_standin,
    "idefics3": idefics3_standin,
    "llavaonevision": llavaonevision_standin,
}


def family_standin_config(name: str, full: bool):
    """(model class, config, processor) of the stand-in `name` (FAMILY_STANDIN_NAMES)."""
    if name not in FAMILY_STANDINS:
        raise ValueError(f"unknown stand-in {name!r}; known: {', '.join(FAMILY_STANDIN_NAMES)}")
    real = FAMILY_STANDINS[name]
    return STANDIN_BUILDERS[real["family"]](real, full)


def family_standin(name: str, size: str = "tiny", seed: int = 0):
    """(model, processor) of a random-weight stand-in of one family's real checkpoint (FAMILY_STANDIN_NAMES):
    size "full" is the hub's structure exactly (billions of parameters: build it on the meta device or in
    bf16 with memory to spare, scripts/full_standins.py); "tiny" shrinks the widths only."""
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', not {size!r}")
    cls, config, processor = family_standin_config(name, size == "full")
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation="eager")
    return random_gemma3_projector(model).eval(), processor


def save_family_standin(name: str, folder, size: str = "tiny", seed: int = 0, dtype=torch.bfloat16):
    """Write a stand-in to `folder` with save_pretrained (bf16, like the hub's weights), marked as random
    weights so that pages run on it say so; load it with `vlmlib.load_model(folder)`."""
    from vlmlib.models import RANDOM_WEIGHTS_MARKER

    model, processor = family_standin(name, size, seed)
    setattr(model.config, RANDOM_WEIGHTS_MARKER, True)
    model.to(dtype).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# llava-hf/llava-onevision-qwen2-0.5b-ov-hf's chat template (processor's chat_template.json): a turn's images,
# then "\n" + each text; no newline after <|im_end|>.
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}"
    "{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}"
    "{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}{{'<|im_end|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_llavaonevision(shape: TinyShape = TinyShape(), seed: int = 0, vocabulary=VOCABULARY):
    """(model, processor) of a random-weight LLaVA-OneVision with anyres on: pinpoint grids of 1 x 1 to 2 x 2
    crops of `image_size` px (the real ones: up to 6 x 6 of 384 px), the whole image first; SigLIP-style
    tower, two-layer MLP projector, Qwen2 decoder. A square 64 px image is 2 tower rows (the whole image and
    one crop): 64 + 8 x (8 + 1 newline) = 136 image tokens."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from vlmlib.families.llava_onevision import image_only_processor_class

    tok, ids = qwen_tokenizer(vocabulary)
    side = shape.image_size
    pinpoints = [[side * r, side * c] for r in (1, 2) for c in (1, 2)]
    image_proc = LlavaOnevisionImageProcessorPil(
        size={"height": side, "width": side},
        image_grid_pinpoints=pinpoints,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    processor = image_only_processor_class()(
        image_processor=image_proc,
        tokenizer=tok,
        num_image_tokens=(side // shape.patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )
    vision_hidden, vision_intermediate, vision_heads = shape.vision()
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=vision_intermediate,
            num_hidden_layers=shape.vision_layers,
            num_attention_heads=vision_heads,
            image_size=side,
            patch_size=shape.patch_size,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tok),
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=shape.decoder_layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=1,
            bos_token_id=None,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model.eval(), processor
