"""PaliGemma (1 and 2): a SigLIP vision tower, a linear projector, a Gemma decoder with a prefix-LM mask."""

from __future__ import annotations

from dataclasses import replace

from .base import Family, PromptOptions


class PaliGemmaFamily(Family):
    def classes(self):
        from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

        return PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    def for_config(self, config) -> Family:
        # PaliGemma 2 (Gemma 2 decoder): sublayer outputs pass a post-norm before the residual add.
        text_type = getattr(getattr(config, "text_config", None), "model_type", "")
        if text_type.startswith("gemma2"):
            return replace(
                self,
                attn_contribution="post_attention_layernorm",
                mlp_contribution="post_feedforward_layernorm",
            )
        return self

    def prompt(self, processor, question, options=PromptOptions()):
        if options.system_prompt is not None:
            raise ValueError(
                "system_prompt: PaliGemma has no chat template and no system turn; leave it None "
                "(a task prefix such as 'answer en ' goes in task_prefix)"
            )
        # The processor expands "<image>" to the image tokens and adds <bos> and the "\n" separator:
        # <image> x N, <bos>, [task prefix] question, "\n" -- the paper's "<image> How many objects ...".
        return processor.image_token + options.task_prefix + question

    def text_prompt(self, processor, question):
        # as the processor lays out text after the image
        return processor.tokenizer.bos_token + question + "\n"

    def encode(self, processor, images, questions, answers=None, options=PromptOptions()):
        prompts = [self.prompt(processor, q, options) for q in questions]
        batch = processor(
            text=prompts, images=list(images), suffix=answers, padding="longest", return_tensors="pt"
        )
        if answers is None:
            batch.pop("labels", None)  # all -100 without a suffix
        return batch


PALIGEMMA = PaliGemmaFamily(
    name="paligemma",
    title="PaliGemma",
    model_types=("paligemma",),
    decoder_layers="model.language_model.layers",
    vision_tower="model.vision_tower",
    vision_layers="model.vision_tower.encoder.layers",
    projector="model.multi_modal_projector",
    # google/paligemma-3b-pt-448: a Gemma-2B decoder, a SigLIP-So400m tower
    reference_checkpoint="PaliGemma-3B",
    reference_depths=(("decoder", 18), ("vision tower", 27)),
)
