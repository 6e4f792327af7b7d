"""A family added in one file: LLaVA (1.5-style: a CLIP tower, a two-layer MLP projector, a Llama decoder).

Everything the toolkit needs to study it is here: the site table, the prompt and encoding, the model and
processor classes. `register_family(LLAVA)` makes it a family like the built-in ones; nothing in vlmlib
changes. `tiny_llava()` builds a random-weight model offline for the tests.
"""

from __future__ import annotations

import torch

from vlmlib import Family, PromptOptions
from vlmlib.data import VOCABULARY


class LlavaFamily(Family):
    def classes(self):
        from transformers import LlavaForConditionalGeneration, LlavaProcessor

        return LlavaForConditionalGeneration, LlavaProcessor

    def prompt(self, processor, question, options=PromptOptions()):
        if options.system_prompt is not None:
            raise ValueError("system_prompt: this LLaVA template has no system turn; leave it None")
        return f"USER: {processor.image_token}\n{options.task_prefix}{question} ASSISTANT:"

    def text_prompt(self, processor, question):
        return f"USER: {question} ASSISTANT:"

    def encode(self, processor, images, questions, answers=None, options=PromptOptions()):
        prompts = [self.prompt(processor, q, options) for q in questions]
        if answers is not None:
            prompts = [f"{p} {a}{processor.tokenizer.eos_token}" for p, a in zip(prompts, answers)]
        return processor(text=prompts, images=list(images), padding=True, return_tensors="pt")


LLAVA = LlavaFamily(
    name="llava",
    title="LLaVA",
    model_types=("llava",),
    decoder_layers="model.language_model.layers",
    vision_tower="model.vision_tower",
    vision_layers="model.vision_tower.encoder.layers",
    projector="model.multi_modal_projector",
    reference_checkpoint="LLaVA-1.5-7B",
    reference_depths=(("decoder", 32), ("vision tower", 24)),
)


def tiny_llava(seed: int = 0, image_size: int = 64, patch: int = 8):
    """(model, processor) of a random-weight LLaVA: 4 decoder layers, 2 tower layers, 64 image tokens."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from vlmlib.organisms.builders import word_tokenizer

    tok = word_tokenizer(
        ["<pad>", "<s>", "</s>", "<unk>", "<image>"],
        [*VOCABULARY, "USER:", "ASSISTANT:"],
        "<s>",
        "</s>",
        "<pad>",
    )
    image_proc = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    # CLIP's CLS, dropped by "default"
    processor = LlavaProcessor(
        image_processor=image_proc,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model.eval(), processor
