"""Gemma 3: a SigLIP vision tower, a projector that average-pools the patch grid (4 x 4 patches per token:
896 px -> 64 x 64 patches -> 256 tokens) before an RMSNorm and a linear map, a Gemma 3 decoder whose layers
attend locally (a 1,024-token sliding window) five times for every global layer.

Sites are PaliGemma 2's: a Gemma 3 block norms each sublayer's output before adding it to the residual
(`post_attention_layernorm`, `post_feedforward_layernorm`), so those norms are the contribution sites and
H^(l) = H^(l-1) + attn + mlp holds exactly. The image's 256 soft tokens (`image_token_id`, not the
<start_of_image> marker the prompt carries) attend to each other bidirectionally when the processor's
`token_type_ids` are passed: always pass what the processor returns. Images are given one list per
sample; with pan-and-scan on, an image becomes itself and its crops, each a row of the vision tower
(`vision_crops` maps them back to the sample).
"""

from __future__ import annotations

from .base import Family, PromptOptions
from .llava import answer_labels


class Gemma3Family(Family):
    # google/gemma-3-4b-it's chat template, one user turn with an image and a question:
    # "<bos><start_of_turn>user\n<start_of_image>{question}<end_of_turn>\n<start_of_turn>model\n"; a system
    # message is prefixed to the first user turn's text ("{system}\n\n"). The tokenizer adds <bos>, so the
    # prompt is the template's text without it. The processor expands <start_of_image> to
    # "\n\n<start_of_image>" + 256 x <image_soft_token> + "<end_of_image>\n\n".
    USER_TURN = "<start_of_turn>user\n{system}{image}{text}<end_of_turn>\n<start_of_turn>model\n"
    END_OF_TURN = "<end_of_turn>"

    def classes(self):
        from transformers import Gemma3ForConditionalGeneration, Gemma3Processor

        return Gemma3ForConditionalGeneration, Gemma3Processor

    def prompt(self, processor, question, options=PromptOptions()):
        image = processor.boi_token
        if options.bare:
            if options.system_prompt is not None:
                raise ValueError("system_prompt: the bare prompt has no system turn; leave it None")
            return f"{image}{options.task_prefix}{question}"
        system = "" if options.system_prompt is None else f"{options.system_prompt}\n\n"
        return self.USER_TURN.format(system=system, image=image, text=options.task_prefix + question)

    def text_prompt(self, processor, question):
        return f"<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n"

    def encode(self, processor, images, questions, answers=None, options=PromptOptions()):
        prompts = [self.prompt(processor, q, options) for q in questions]
        nested = [[image] for image in images]  # one list of images per sample
        if answers is None:
            return processor(text=prompts, images=nested, padding=True, return_tensors="pt")
        end = processor.tokenizer.eos_token if options.bare else self.END_OF_TURN
        return answer_labels(processor, nested, prompts, list(answers), end=end)

    def pool_tokens(self, model, rows, columns):
        """The projector's average pooling: `mm_tokens_per_image` tokens, a square grid."""
        side = round(model.config.mm_tokens_per_image**0.5)
        return side, side

    def vision_token_grid(self, model, processor, inputs):
        # with pan-and-scan crops, the tokens are several grids (the image's, then each crop's)
        return (
            None if self.vision_crops(model, inputs) else super().vision_token_grid(model, processor, inputs)
        )

    def vision_crops(self, model, inputs):
        """Vision-tower rows per sample: one per image and per pan-and-scan crop, each announced in the
        prompt by its own <start_of_image>."""
        boi = model.config.boi_token_index
        counts = (inputs["input_ids"] == boi).sum(1).tolist()
        return None if all(c == 1 for c in counts) else counts


GEMMA3 = Gemma3Family(
    name="gemma3",
    title="Gemma 3",
    model_types=("gemma3",),
    decoder_layers="model.language_model.layers",
    vision_tower="model.vision_tower",
    vision_layers="model.vision_tower.encoder.layers",
    projector="model.multi_modal_projector",
    attn_contribution="post_attention_layernorm",
    mlp_contribution="post_feedforward_layernorm",
    # google/gemma-3-4b-it (config.json): a 34-layer Gemma 3 decoder, a 27-layer SigLIP-So400m tower
    reference_checkpoint="Gemma-3-4B",
    in_paper=False,
    reference_depths=(("decoder", 34), ("vision tower", 27)),
)
