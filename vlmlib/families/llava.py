"""LLaVA (1.5): a CLIP vision tower, a two-layer MLP projector, a Llama (Vicuna) decoder.

The projector reads the tower's second-to-last layer (`vision_feature_layer=-2` in
llava-hf/llava-1.5-*-hf), without CLIP's CLS token (`vision_feature_select_strategy="default"`): the
tower's last layer runs, but nothing downstream reads it, so a patch of it changes nothing. The family's
vision tower is therefore the layers up to the one the projector reads (23 of CLIP ViT-L's 24): the
readings, the layer groups and the tower patches of chapter 7 cover those; the last layer stays
readable by its site (`vision.23`).
"""

from __future__ import annotations

from .base import Family, PromptOptions


class LlavaFamily(Family):
    # llava-hf/llava-1.5-7b-hf's chat template renders one user turn with an image and a question as
    # "USER: <image>\n{question} ASSISTANT:" (the tokenizer adds <s>); the bare option is the paper's
    # prompt with nothing around it, "<image>\n{question}" (the image and the question as LLaVA's
    # pretraining laid them out).
    USER_TURN = "USER: {image}\n{text} ASSISTANT:"
    SYSTEM_TURN = "{} "  # the template writes a system message as it is, before "USER:"

    def classes(self):
        from transformers import LlavaForConditionalGeneration, LlavaProcessor

        return LlavaForConditionalGeneration, LlavaProcessor

    def num_vision_layers(self, model):
        """The tower's layers up to the deepest one the projector reads (`vision_feature_layer` indexes the
        tower's hidden states: 0 the embeddings, k the output of layer k - 1, negative from the end)."""
        depth = super().num_vision_layers(model)
        return feature_depth(model.config.vision_feature_layer, depth)

    def prompt(self, processor, question, options=PromptOptions()):
        image = processor.image_token
        if options.bare:
            if options.system_prompt is not None:
                raise ValueError("system_prompt: the bare prompt has no system turn; leave it None")
            return f"{image}\n{options.task_prefix}{question}"  # LLaVA's pretraining layout
        system = "" if options.system_prompt is None else self.SYSTEM_TURN.format(options.system_prompt)
        return system + self.USER_TURN.format(image=image, text=options.task_prefix + question)

    def text_prompt(self, processor, question):
        return f"USER: {question} ASSISTANT:"

    def encode(self, processor, images, questions, answers=None, options=PromptOptions()):
        prompts = [self.prompt(processor, q, options) for q in questions]
        if answers is None:
            return processor(text=prompts, images=list(images), padding=True, return_tensors="pt")
        # The answer follows "ASSISTANT:" after a space (the template's assistant turn: text + " "), then
        # </s>; the prompt is masked out of the labels.
        return answer_labels(processor, images, prompts, [f" {a}" for a in answers])


def feature_depth(feature_layer, depth: int) -> int:
    """How many tower layers feed a projector that reads hidden states `feature_layer` (one index or a
    list, as LLaVA-style configs give them) of a `depth`-layer tower."""
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    return max(i % (depth + 1) for i in layers)


def answer_labels(processor, images, prompts, answers, end: str | None = None):
    """A batch of prompt + answer + end-of-turn (default: the tokenizer's eos), labels on the answer and the
    end only (the prompt and padding are -100): how a family without a `suffix=` argument trains."""
    end = processor.tokenizer.eos_token if end is None else end
    full = [p + a + end for p, a in zip(prompts, answers)]
    batch = processor(text=full, images=list(images), padding=True, return_tensors="pt")
    prompt_lengths = [len(x) for x in processor(text=prompts, images=list(images))["input_ids"]]
    labels = batch["input_ids"].clone()
    for row, n in enumerate(prompt_lengths):
        labels[row, :n] = -100
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    return batch


LLAVA = LlavaFamily(
    name="llava",
    title="LLaVA",
    model_types=("llava",),
    decoder_layers="model.language_model.layers",
    vision_tower="model.vision_tower",
    vision_layers="model.vision_tower.encoder.layers",
    projector="model.multi_modal_projector",
    # llava-hf/llava-1.5-7b-hf: Vicuna-7B (LlamaConfig: 32 layers), CLIP ViT-L/14-336 (24 layers, of
    # which the projector reads the output of the 23rd: vision_feature_layer=-2)
    reference_checkpoint="LLaVA-1.5-7B",
    in_paper=False,
    reference_depths=(("decoder", 32), ("vision tower", 23)),
)
