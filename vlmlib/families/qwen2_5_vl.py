"""Qwen2.5-VL: Qwen2-VL's layout (a ViT with a 2x2 patch merger, a Qwen2 decoder with multimodal rotary
positions) with a ViT of RMSNorm/SwiGLU blocks that attend within windows of 112 px, except the full-
attention blocks (7, 15, 23, 31 in the released checkpoints).

The tower reorders its patches window by window before its first block and back after the merger; a
sample's patches stay one contiguous run of the packed sequence, so its per-sample readings are
Qwen2-VL's. The prompt, the chat template (the Instruct checkpoints' is Qwen2-VL-Instruct's) and the
processor (image-only, without torchvision) are Qwen2-VL's too.
"""

from __future__ import annotations

from .qwen2vl import Qwen2VLFamily


def image_only_processor_class():
    """Qwen2.5-VL's processor without its video processor (which needs torchvision, see DESIGN.md)."""
    global _IMAGE_ONLY_PROCESSOR
    if _IMAGE_ONLY_PROCESSOR is None:
        from transformers import Qwen2_5_VLProcessor

        class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
            """Qwen2.5-VL's processor without its video processor (which needs torchvision)."""

            @classmethod
            def get_attributes(cls):
                return ["image_processor", "tokenizer"]

        _IMAGE_ONLY_PROCESSOR = Qwen2_5_VLImageOnlyProcessor
    return _IMAGE_ONLY_PROCESSOR


_IMAGE_ONLY_PROCESSOR = None


class Qwen2_5_VLFamily(Qwen2VLFamily):
    def classes(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration, image_only_processor_class()

    def position_ids(self, model, inputs):
        """(3, batch, T) multimodal rotary positions, as the model's forward computes them (its method takes
        the KV cache and the video's seconds per grid step besides Qwen2-VL's arguments)."""
        return model.get_submodule(self.base_model).compute_3d_position_ids(
            input_ids=inputs["input_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            inputs_embeds=None,
            attention_mask=inputs.get("attention_mask"),
            past_key_values=None,
            second_per_grid_ts=inputs.get("second_per_grid_ts"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
        )


QWEN2_5_VL = Qwen2_5_VLFamily(
    name="qwen25vl",
    title="Qwen2.5-VL",
    model_types=("qwen2_5_vl",),
    decoder_layers="model.language_model.layers",
    vision_tower="model.visual",
    vision_layers="model.visual.blocks",
    projector="model.visual.merger",
    vision_attn_contribution="attn",
    # Qwen/Qwen2.5-VL-3B-Instruct (config.json): a 36-layer Qwen2.5 decoder, a 32-block ViT
    reference_checkpoint="Qwen2.5-VL-3B",
    in_paper=False,
    reference_depths=(("decoder", 36), ("vision tower", 32)),
)
