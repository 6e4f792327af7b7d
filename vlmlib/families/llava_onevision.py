"""LLaVA-OneVision: a SigLIP vision tower run on every crop of an "anyres" image, a two-layer MLP projector,
a Qwen2 decoder.

Anyres, as the checkpoints run it: the processor chooses the grid of the pinpoint resolutions
(`image_grid_pinpoints`, 1 x 1 to 6 x 6 crops of 384 px) that best fits the image, cuts the image into
that grid and adds the whole image shrunk to one crop (first); each crop is one row of the vision tower.
The decoder reads the whole image's 27 x 27 tokens, then the crops' tokens laid out as one grid with the
padding removed (`unpad`) and a learned newline vector ending each row (downsampled when there are more
than `anyres_max_9` crops' worth). `vision_crops` maps the tower's rows back to samples, so every
vision-tower reading is a sample's mean over all its crops; the newline tokens are image tokens in the
prompt (they carry the image, though no patch).
"""

from __future__ import annotations

from .base import Family, PromptOptions
from .llava import answer_labels


def image_only_processor_class():
    """LLaVA-OneVision's processor without its video processor (which needs torchvision, see DESIGN.md)."""
    global _IMAGE_ONLY_PROCESSOR
    if _IMAGE_ONLY_PROCESSOR is None:
        from transformers import LlavaOnevisionProcessor

        class LlavaOnevisionImageOnlyProcessor(LlavaOnevisionProcessor):
            """LLaVA-OneVision's processor without its video processor (which needs torchvision)."""

            @classmethod
            def get_attributes(cls):
                return ["image_processor", "tokenizer"]

        _IMAGE_ONLY_PROCESSOR = LlavaOnevisionImageOnlyProcessor
    return _IMAGE_ONLY_PROCESSOR


_IMAGE_ONLY_PROCESSOR = None


class LlavaOnevisionFamily(Family):
    # llava-hf/llava-onevision-qwen2-*-ov-hf's chat template, one user turn with an image and a question:
    # "<|im_start|>user <image>\n{question}<|im_end|><|im_start|>assistant\n" (no newline after <|im_end|>);
    # a system message is a turn of its own, "<|im_start|>system \n{text}<|im_end|>".
    USER_TURN = "{system}<|im_start|>user {image}\n{text}<|im_end|><|im_start|>assistant\n"
    SYSTEM_TURN = "<|im_start|>system \n{}<|im_end|>"

    def classes(self):
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration, image_only_processor_class()

    def prompt(self, processor, question, options=PromptOptions()):
        image = processor.image_token
        if options.bare:
            if options.system_prompt is not None:
                raise ValueError("system_prompt: the bare prompt has no system turn; leave it None")
            return f"{image}\n{options.task_prefix}{question}"
        system = "" if options.system_prompt is None else self.SYSTEM_TURN.format(options.system_prompt)
        return self.USER_TURN.format(system=system, image=image, text=options.task_prefix + question)

    def text_prompt(self, processor, question):
        return f"<|im_start|>user \n{question}<|im_end|><|im_start|>assistant\n"

    def encode(self, processor, images, questions, answers=None, options=PromptOptions()):
        prompts = [self.prompt(processor, q, options) for q in questions]
        if answers is None:
            batch = processor(text=prompts, images=list(images), padding=True, return_tensors="pt")
        else:  # the answer, then the end of the assistant's turn
            batch = answer_labels(processor, list(images), prompts, list(answers), end="<|im_end|>")
        batch.pop("batch_num_images", None)  # one image per sample: the model's default
        return batch

    def vision_crops(self, model, inputs):
        """Vision-tower rows per sample: the whole image and its anyres crops, counted as the model counts
        them (from the image size and the pinpoint grid)."""
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        config = model.config
        return [
            int(
                image_size_to_num_patches(
                    image_size=size,
                    grid_pinpoints=config.image_grid_pinpoints,
                    patch_size=config.vision_config.image_size,
                )
            )
            for size in inputs["image_sizes"]
        ]

    def vision_token_grid(self, model, processor, inputs):
        return None  # the whole image's grid, then the crops' unpadded grid with newlines: not one grid


LLAVA_ONEVISION = LlavaOnevisionFamily(
    name="llavaonevision",
    title="LLaVA-OneVision",
    model_types=("llava_onevision",),
    decoder_layers="model.language_model.layers",
    vision_tower="model.vision_tower",
    vision_layers="model.vision_tower.encoder.layers",
    projector="model.multi_modal_projector",
    # llava-hf/llava-onevision-qwen2-0.5b-ov-hf (config.json): a 24-layer Qwen2-0.5B decoder, SigLIP-So400m
    # at 384 px without its last layer (26 layers)
    reference_checkpoint="LLaVA-OneVision-0.5B",
    in_paper=False,
    reference_depths=(("decoder", 24), ("vision tower", 26)),
)
