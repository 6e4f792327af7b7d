"""Qwen2-VL: a ViT with a 2x2 patch merger (the projector), a Qwen2 decoder with multimodal rotary
positions."""

from __future__ import annotations

from .base import Family, PromptOptions


def image_only_processor_class():
    """Qwen2-VL's processor without its video processor (which needs torchvision, see DESIGN.md).
    Built on first use so that importing the family imports no transformers."""
    global _IMAGE_ONLY_PROCESSOR
    if _IMAGE_ONLY_PROCESSOR is None:
        from transformers import Qwen2VLProcessor

        class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
            """Qwen2-VL's processor without its video processor (which needs torchvision)."""

            @classmethod
            def get_attributes(cls):
                return ["image_processor", "tokenizer"]

        _IMAGE_ONLY_PROCESSOR = Qwen2VLImageOnlyProcessor
    return _IMAGE_ONLY_PROCESSOR


_IMAGE_ONLY_PROCESSOR = None


class Qwen2VLFamily(Family):
    # Written out rather than taken from the checkpoint's chat template: the Qwen2-VL-Instruct template
    # inserts "You are a helpful assistant." whenever the first message is not a system message, so it
    # cannot produce the paper's prompt (no text before the image). This is that template's user turn
    # and generation prompt exactly; the organisms' template yields the same string (tested).
    SYSTEM_TURN = "<|im_start|>system\n{}<|im_end|>\n"
    USER_TURN = (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
    )

    def classes(self):
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration, image_only_processor_class()

    def position_ids(self, model, inputs):
        """(3, batch, T) multimodal rotary positions. The model derives them in a Python loop over the
        rows (with host synchronisations per image on a GPU): computed once per batch, not once per
        stacked row of a patching or knockout pass."""
        return model.get_submodule(self.base_model).compute_3d_position_ids(
            input_ids=inputs["input_ids"],
            inputs_embeds=None,
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            attention_mask=inputs.get("attention_mask"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
        )

    BARE = "<|vision_start|><|image_pad|><|vision_end|>{}"  # the image and the question, no chat markup

    def prompt(self, processor, question, options=PromptOptions()):
        if options.bare:
            if options.system_prompt is not None:
                raise ValueError("system_prompt: the bare prompt has no system turn; leave it None")
            return self.BARE.format(options.task_prefix + question)
        system = "" if options.system_prompt is None else self.SYSTEM_TURN.format(options.system_prompt)
        return system + self.USER_TURN.format(options.task_prefix + question)

    def text_prompt(self, processor, question):
        return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"

    def encode(self, processor, images, questions, answers=None, options=PromptOptions()):
        prompts = [self.prompt(processor, q, options) for q in questions]
        if answers is None:
            return processor(text=prompts, images=list(images), padding=True, return_tensors="pt")
        # Qwen2-VL's processor builds no labels: train on the answer and <|im_end|>, mask the rest.
        eos = processor.tokenizer.eos_token
        full = [p + a + eos for p, a in zip(prompts, answers)]
        batch = processor(text=full, images=list(images), padding=True, return_tensors="pt")
        prompt_lengths = [len(x) for x in processor(text=prompts, images=list(images))["input_ids"]]
        labels = batch["input_ids"].clone()
        for row, n in enumerate(prompt_lengths):
            labels[row, :n] = -100
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return batch


QWEN2VL = Qwen2VLFamily(
    name="qwen2vl",
    title="Qwen2-VL",
    model_types=("qwen2_vl",),
    decoder_layers="model.language_model.layers",
    vision_tower="model.visual",
    vision_layers="model.visual.blocks",
    projector="model.visual.merger",
    vision_attn_contribution="attn",
    # Qwen/Qwen2-VL-2B-Instruct: a 28-layer Qwen2 decoder, a 32-block ViT
    reference_checkpoint="Qwen2-VL-2B",
    reference_depths=(("decoder", 28), ("vision tower", 32)),
)
