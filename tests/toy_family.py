"""A family added in one file: ViP-LLaVA (a CLIP tower whose features from several layers are concatenated,
a layer-normed two-layer MLP projector, a Llama decoder), which vlmlib does not ship.

Everything the toolkit needs to study it is here: the site table, the prompt and encoding, the model and
processor classes. `register_family(VIPLLAVA)` makes it a family like the built-in ones; nothing in vlmlib
changes. `tiny_vipllava()` builds a random-weight model offline for the tests.
"""

from __future__ import annotations

import torch

from vlmlib import Family, PromptOptions
from vlmlib.data import VOCABULARY


class VipLlavaFamily(Family):
    def classes(self):
        from transformers import LlavaProcessor, VipLlavaForConditionalGeneration

        return VipLlavaForConditionalGeneration, LlavaProcessor

    def prompt(self, processor, question, options=PromptOptions()):
        if options.system_prompt is not None:
            raise ValueError("system_prompt: this ViP-LLaVA template has no system turn; leave it None")
        if options.bare:
            return f"{processor.image_token} {options.task_prefix}{question}"
        return f"###Human: {processor.image_token}\n{options.task_prefix}{question} ###Assistant:"

    def text_prompt(self, processor, question):
        return f"###Human: {question} ###Assistant:"

    def encode(self, processor, images, questions, answers=None, options=PromptOptions()):
        prompts = [self.prompt(processor, q, options) for q in questions]
        if answers is not None:
            prompts = [f"{p} {a}{processor.tokenizer.eos_token}" for p, a in zip(prompts, answers)]
        return processor(text=prompts, images=list(images), padding=True, return_tensors="pt")


VIPLLAVA = VipLlavaFamily(
    name="vipllava",
    title="ViP-LLaVA",
    model_types=("vipllava",),
    decoder_layers="model.language_model.layers",
    vision_tower="model.vision_tower",
    vision_layers="model.vision_tower.encoder.layers",
    projector="model.multi_modal_projector",
    reference_checkpoint="ViP-LLaVA-7B",
    reference_depths=(("decoder", 32), ("vision tower", 24)),
)


def tiny_vipllava(seed: int = 0, image_size: int = 64, patch: int = 8):
    """(model, processor) of a random-weight ViP-LLaVA: 4 decoder layers, 2 tower layers, 64 image tokens."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaProcessor,
        VipLlavaConfig,
        VipLlavaForConditionalGeneration,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from vlmlib.organisms.builders import word_tokenizer

    tok = word_tokenizer(
        ["<pad>", "<s>", "</s>", "<unk>", "<image>"],
        [*VOCABULARY, "###Human:", "###Assistant:"],
        "<s>",
        "</s>",
        "<pad>",
    )
    image_proc = CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_proc,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",  # ViP-LLaVA drops CLIP's CLS from every layer it reads
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = VipLlavaConfig(
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
        vision_feature_layer=[-1, 1],  # the last layer's output and the first's, concatenated
    )
    torch.manual_seed(seed)
    model = VipLlavaForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model.eval(), processor
