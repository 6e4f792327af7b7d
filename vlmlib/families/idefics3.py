"""Idefics3 and SmolVLM (model type `idefics3`): a SigLIP vision tower run on every crop of a split image,
a connector that pixel-shuffles each crop's patch grid (scale factor 2 or 3: 4 or 9 patches per token)
and projects it linearly, a Llama (SmolLM2) decoder. The decoder module is `text_model`, not
`language_model`.

Image splitting, as the checkpoints run it: the processor resizes an image so that its longest edge is
`size["longest_edge"]`, cuts it into a grid of crops of `max_image_size`, and adds the whole image shrunk
to one crop (the global image). Each crop is one row of the vision tower's (crops, patches, width) states;
the prompt lays them out as "<fake_token_around_image><row_1_col_1>" + image tokens ... + "\\n" per row,
then "\\n<fake_token_around_image><global-img>" + image tokens + "<fake_token_around_image>".
`vision_crops` maps the tower's rows back to samples (padding crops, all zeros, are dropped by the model
and not counted), so every vision-tower reading is a mean over all of a sample's crops and patches.
"""

from __future__ import annotations

from .base import Family, PromptOptions
from .llava import answer_labels


class Idefics3Family(Family):
    # HuggingFaceTB/SmolVLM-Instruct's (and Idefics3-8B-Llama3's) chat template, one user turn with an image
    # and a question: "<bos>User:<image>{question}<end_of_utterance>\nAssistant:" (a turn that begins with
    # text gets "User: "); the tokenizer adds the BOS. A system message is a turn of its own,
    # "System: {text}<end_of_utterance>\n".
    USER_TURN = "{system}User:{image}{text}<end_of_utterance>\nAssistant:"
    SYSTEM_TURN = "System: {}<end_of_utterance>\n"
    END_OF_TURN = "<end_of_utterance>"

    def classes(self):
        from transformers import Idefics3ForConditionalGeneration, Idefics3Processor

        return Idefics3ForConditionalGeneration, Idefics3Processor

    def prompt(self, processor, question, options=PromptOptions()):
        image = processor.image_token
        if options.bare:
            if options.system_prompt is not None:
                raise ValueError("system_prompt: the bare prompt has no system turn; leave it None")
            return f"{image}{options.task_prefix}{question}"
        system = "" if options.system_prompt is None else self.SYSTEM_TURN.format(options.system_prompt)
        return self.USER_TURN.format(system=system, image=image, text=options.task_prefix + question)

    def text_prompt(self, processor, question):
        return f"User: {question}<end_of_utterance>\nAssistant:"

    def encode(self, processor, images, questions, answers=None, options=PromptOptions()):
        prompts = [self.prompt(processor, q, options) for q in questions]
        nested = [[image] for image in images]  # one list of images per sample
        if answers is None:
            batch = processor(text=prompts, images=nested, padding=True, return_tensors="pt")
        else:  # the answer follows "Assistant:" after a space, then the end of the turn
            end = processor.tokenizer.eos_token if options.bare else self.END_OF_TURN
            batch = answer_labels(processor, nested, prompts, [f" {a}" for a in answers], end=end)
        batch.pop("mm_token_type_ids", None)  # the processor's, not an input of the model
        return batch

    def vision_token_grid(self, model, processor, inputs):
        """None when the image is split (its tokens are several crops' grids, then the global image's);
        otherwise the crop's patch grid pixel-shuffled by `scale_factor`."""
        if self.vision_crops(model, inputs)[0] != 1:
            return None
        return super().vision_token_grid(model, processor, inputs)

    def pool_tokens(self, model, rows, columns):
        scale = model.config.scale_factor
        return rows // scale, columns // scale

    def vision_crops(self, model, inputs):
        """Vision-tower rows per sample: its crops and global image, as the model keeps them (a padding
        image, all zeros, is dropped)."""
        pixels = inputs["pixel_values"]  # (batch, images, channels, height, width)
        return (pixels != 0).flatten(2).any(-1).sum(1).tolist()


IDEFICS3 = Idefics3Family(
    name="idefics3",
    title="Idefics3 / SmolVLM",
    model_types=("idefics3",),
    decoder_layers="model.text_model.layers",
    vision_tower="model.vision_model",
    vision_layers="model.vision_model.encoder.layers",
    projector="model.connector",
    # HuggingFaceTB/SmolVLM-Instruct (config.json): a 24-layer SmolLM2-1.7B decoder, a 27-layer
    # SigLIP-So400m tower at 384 px, pixel shuffle by 3 (81 tokens per crop)
    reference_checkpoint="SmolVLM-Instruct",
    in_paper=False,
    reference_depths=(("decoder", 24), ("vision tower", 27)),
)
