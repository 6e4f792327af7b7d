"""Model families: where each site lives, and how a prompt is formatted.

Analyses speak of sites, "attention contribution of decoder layer 5", "output of vision layer 2";
a family's site table says which module that is. Prompt formatting lives here too, never in a
chapter: PaliGemma takes its `<image>` prefix and a prefix-LM mask, Qwen2-VL its chat markup.
`PromptOptions` holds what a user may change (system prompt, task prefix); its defaults are the
paper's prompt.

Site kinds (layer index l counts from 0):
    embed         H^(0): the decoder's input, image features merged in (input of decoder layer 0)
    resid         H^(l+1): output of decoder layer l, never the final-norm output
    attn          what attention adds to the residual in layer l
    mlp           what the MLP adds to the residual in layer l
    attn_weights  attention probabilities of layer l, (batch, heads, query, key); needs eager attention
    vision        output of vision-tower layer l (Qwen2-VL: packed patches, (patches, width))
    vision_attn   what attention adds to the vision tower's residual in layer l
    vision_mlp    what the MLP adds to the vision tower's residual in layer l

`vlmlib.trace` adds one kind of its own, `vision_embed`: the input of vision-tower layer l, read at
the block that `vision` names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SITE_KINDS = ("embed", "resid", "attn", "mlp", "attn_weights", "vision", "vision_attn", "vision_mlp")


@dataclass(frozen=True)
class PromptOptions:
    """How a question becomes a prompt. The defaults are the paper's setting:
    "<image> How many objects are in the image?" with nothing else around it."""

    # A system turn for chat-template families (Qwen2-VL). None: no system turn, so no text precedes
    # the image. "You are a helpful assistant." reproduces the Qwen2-VL-Instruct template's default.
    system_prompt: str | None = None
    # Text put before the question, e.g. PaliGemma pt checkpoints' "answer en " task prefix.
    task_prefix: str = ""

    def __post_init__(self):
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise TypeError(f"system_prompt must be a string or None, not {type(self.system_prompt).__name__}")
        if not isinstance(self.task_prefix, str):
            raise TypeError(f"task_prefix must be a string (empty for none), not {type(self.task_prefix).__name__}")


@dataclass(frozen=True)
class Family:
    """Site table of one architecture family. Paths are relative to the ...ForConditionalGeneration."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values of this family
    decoder_layers: str  # the ModuleList of decoder layers
    vision_tower: str  # the whole vision encoder (Qwen2-VL's includes its merger, the projector)
    vision_layers: str  # the ModuleList of vision-tower layers
    projector: str
    # The model without its LM head (returns the last hidden state): passes that read no logits use it.
    base_model: str = "model"
    attn_module: str = "self_attn"  # relative to a decoder layer; its output is (attn_out, weights)
    # Modules whose output is exactly what is added to the residual (relative to a decoder layer).
    # Gemma-2-style blocks norm a sublayer's output before adding it: there it is the post-norm.
    attn_contribution: str = "self_attn"
    mlp_contribution: str = "mlp"
    # The same for a vision-tower layer (pre-norm blocks: the sublayer outputs are added as they are).
    vision_attn_contribution: str = "self_attn"
    vision_mlp_contribution: str = "mlp"

    # ------------------------------------------------------------ sites

    def site_module(self, model: torch.nn.Module, kind: str, layer: int) -> torch.nn.Module:
        if kind not in SITE_KINDS:
            raise ValueError(f"unknown site kind {kind!r}; known: {SITE_KINDS}")
        if kind.startswith("vision"):
            layers = model.get_submodule(self.vision_layers)
            name = "vision"
        else:
            layers = model.get_submodule(self.decoder_layers)
            name = "decoder"
        if not 0 <= layer < len(layers):
            raise IndexError(f"{kind} layer {layer} is outside the model: its {name} has layers 0..{len(layers) - 1}")
        block = layers[layer]
        if kind == "attn":
            return block.get_submodule(self.attn_contribution)
        if kind == "mlp":
            return block.get_submodule(self.mlp_contribution)
        if kind == "attn_weights":
            return block.get_submodule(self.attn_module)
        if kind == "vision_attn":
            return block.get_submodule(self.vision_attn_contribution)
        if kind == "vision_mlp":
            return block.get_submodule(self.vision_mlp_contribution)
        return block  # embed (input of layer 0), resid, vision

    def num_layers(self, model: torch.nn.Module) -> int:
        return len(model.get_submodule(self.decoder_layers))

    def num_vision_layers(self, model: torch.nn.Module) -> int:
        return len(model.get_submodule(self.vision_layers))

    def position_ids(self, model: torch.nn.Module, inputs) -> torch.Tensor | None:
        """The decoder's position ids for an encoded batch, as the model's forward would compute them, or
        None where the forward's own are cheap (plain counting). Passes that repeat a batch (patching,
        knockouts) compute them once for the batch and tile them (`vlmlib.patching.repeat_inputs`)."""
        return None

    # ------------------------------------------------------------ prompts

    def prompt(self, processor, question: str, options: PromptOptions = PromptOptions()) -> str:
        raise NotImplementedError

    def encode(self, processor, images, questions, answers=None, options: PromptOptions = PromptOptions()):
        """Batch of model inputs (right-padded). With `answers`, also `labels` for training."""
        raise NotImplementedError


class PaliGemmaFamily(Family):
    def prompt(self, processor, question, options=PromptOptions()):
        if options.system_prompt is not None:
            raise ValueError("system_prompt: PaliGemma has no chat template and no system turn; leave it None "
                             "(a task prefix such as 'answer en ' goes in task_prefix)")
        # The processor expands "<image>" to the image tokens and adds <bos> and the "\n" separator:
        # <image> x N, <bos>, [task prefix] question, "\n" -- the paper's "<image> How many objects ...".
        return processor.image_token + options.task_prefix + question

    def encode(self, processor, images, questions, answers=None, options=PromptOptions()):
        prompts = [self.prompt(processor, q, options) for q in questions]
        batch = processor(text=prompts, images=list(images), suffix=answers, padding="longest", return_tensors="pt")
        if answers is None:
            batch.pop("labels", None)  # all -100 without a suffix
        return batch


class Qwen2VLFamily(Family):
    # Written out rather than taken from the checkpoint's chat template: the Qwen2-VL-Instruct template
    # inserts "You are a helpful assistant." whenever the first message is not a system message, so it
    # cannot produce the paper's prompt (no text before the image). This is that template's user turn
    # and generation prompt exactly; the organisms' template yields the same string (tested).
    SYSTEM_TURN = "<|im_start|>system\n{}<|im_end|>\n"
    USER_TURN = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"

    def position_ids(self, model, inputs):
        """(3, batch, T) multimodal rotary positions. The model derives them in a Python loop over the
        rows (with host synchronisations per image on a GPU): on every stacked row of a knockout pass that
        was about 5% of chapter 8's CPU time on the Qwen2-VL organism."""
        return model.get_submodule(self.base_model).compute_3d_position_ids(
            input_ids=inputs["input_ids"], inputs_embeds=None, image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"), attention_mask=inputs.get("attention_mask"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"))

    def prompt(self, processor, question, options=PromptOptions()):
        system = "" if options.system_prompt is None else self.SYSTEM_TURN.format(options.system_prompt)
        return system + self.USER_TURN.format(options.task_prefix + question)

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


PALIGEMMA = PaliGemmaFamily(
    name="paligemma",
    model_types=("paligemma",),
    decoder_layers="model.language_model.layers",
    vision_tower="model.vision_tower",
    vision_layers="model.vision_tower.encoder.layers",
    projector="model.multi_modal_projector",
)

# PaliGemma 2 (Gemma 2 decoder): sublayer outputs pass a post-norm before the residual add.
PALIGEMMA2_CONTRIBUTIONS = dict(attn_contribution="post_attention_layernorm",
                                mlp_contribution="post_feedforward_layernorm")

QWEN2VL = Qwen2VLFamily(
    name="qwen2vl",
    model_types=("qwen2_vl",),
    decoder_layers="model.language_model.layers",
    vision_tower="model.visual",
    vision_layers="model.visual.blocks",
    projector="model.visual.merger",
    vision_attn_contribution="attn",
)

FAMILIES = (PALIGEMMA, QWEN2VL)
FAMILY_BY_NAME = {family.name: family for family in FAMILIES}


def family_for_config(config) -> Family:
    """The family of a transformers config, or a clear error for a text-only or unsupported model."""
    from dataclasses import replace

    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            text_type = getattr(getattr(config, "text_config", None), "model_type", "")
            if family is PALIGEMMA and text_type.startswith("gemma2"):
                return replace(family, **PALIGEMMA2_CONTRIBUTIONS)
            return family
    supported = ", ".join(t for f in FAMILIES for t in f.model_types)
    if getattr(config, "vision_config", None) is None:
        raise UnsupportedModelError(
            f"model type {model_type!r} is a text-only model (its config has no vision tower); this toolkit "
            f"studies vision-language models of the families: {supported}")
    raise UnsupportedModelError(
        f"model type {model_type!r} is not a supported vision-language family yet; supported: {supported}. "
        "A new family needs a site table in vlmlib/families.py")


class UnsupportedModelError(ValueError):
    pass
