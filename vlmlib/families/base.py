"""What a model family is: where each site lives, how a prompt is formatted, which classes load it.

One family is one file beside this one (`paligemma.py`, `qwen2vl.py`); `vlmlib.families` registers
them. A family file holds its site table, its prompt and encoding, its transformers model and processor
classes and their quirks, its title, and the depths of its reference checkpoint.

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

A family may add kinds of its own (`site_kinds`), among them terms that it adds to the decoder's residual
besides attention and the MLP (`residual_terms`): Qwen3-VL's `deepstack`, the vision features DeepStack
adds after its first decoder layers, so that there H^(l+1) = H^(l) + attn + mlp + deepstack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SITE_KINDS = ("embed", "resid", "attn", "mlp", "attn_weights", "vision", "vision_attn", "vision_mlp")


@dataclass(frozen=True)
class PromptOptions:
    """How a question becomes a prompt. The defaults are the paper's setting as each checkpoint's own
    prompt format carries it: "<image> How many objects are in the image?", no system turn, no task
    prefix; a chat checkpoint gets it as one user turn of its chat template (Qwen2-VL's markup)."""

    # A system turn for chat-template families (Qwen2-VL). None: no system turn, so no text precedes
    # the image. "You are a helpful assistant." reproduces the Qwen2-VL-Instruct template's default.
    system_prompt: str | None = None
    # Text put before the question, e.g. PaliGemma pt checkpoints' "answer en " task prefix.
    task_prefix: str = ""
    # True: the paper's bare prompt, the image placeholder and the question with no chat markup around
    # them (what a pretrained checkpoint without a template reads; PaliGemma's prompt is always bare).
    bare: bool = False

    def __post_init__(self):
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise TypeError(
                f"system_prompt must be a string or None, not {type(self.system_prompt).__name__}"
            )
        if not isinstance(self.bare, bool):
            raise TypeError(f"bare must be True or False, not {self.bare!r}")
        if not isinstance(self.task_prefix, str):
            raise TypeError(
                f"task_prefix must be a string (empty for none), not {type(self.task_prefix).__name__}"
            )


@dataclass(frozen=True)
class Family:
    """Site table of one architecture family. Paths are relative to the ...ForConditionalGeneration."""

    name: str  # the family's short name; also the book part that runs it
    title: str  # its name on a page ("Qwen2-VL")
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
    # The family's reference checkpoint (the one the paper studied) and its depths, by part
    # ("decoder", "vision tower"): layer-group rules recognise a model of exactly these depths.
    reference_checkpoint: str = ""
    reference_depths: tuple[tuple[str, int], ...] = ()
    # False for a family the paper did not study: its reference checkpoint is the one its stand-in and
    # facts follow, and its layer groups always scale by depth (the paper's indices are for its models).
    in_paper: bool = True

    def reference_depth(self, where: str) -> int | None:
        """The depth of the paper's model of this family in one part (None for a family it did not study)."""
        return dict(self.reference_depths).get(where) if self.in_paper else None

    def checkpoint_depth(self, where: str) -> int | None:
        """The depth of the family's reference checkpoint in one part, whether or not the paper studied it."""
        return dict(self.reference_depths).get(where)

    # ------------------------------------------------------------ classes

    def classes(self):
        """(model class, processor class) that load a checkpoint of this family."""
        raise NotImplementedError

    def for_config(self, config) -> Family:
        """The family as it applies to one checkpoint's config (a variant may move its sites)."""
        return self

    # ------------------------------------------------------------ sites

    def site_kinds(self) -> tuple[str, ...]:
        """The site kinds of this family: `SITE_KINDS` and any of its own."""
        return SITE_KINDS

    def residual_terms(self, model: torch.nn.Module, layer: int) -> tuple[str, ...]:
        """Site kinds of decoder layer `layer` whose values are added to the residual besides attention and
        the MLP (none in most families), so that H^(l+1) = H^(l) + attn + mlp + the sum of these."""
        return ()

    def site_layers(self, model: torch.nn.Module, kind: str) -> int:
        """How many layers have a site of `kind` (0 .. n-1)."""
        if kind.startswith("vision"):
            return self.num_vision_layers(model)
        return self.num_layers(model)

    def resumable(self, model: torch.nn.Module, skips: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The (block list path, first block to run) entries of a resume plan that this family allows: a
        lean run skips the blocks before `first` of each, block first-1 returning the clean state there
        (`vlmlib.interventions.resume`). All of them, unless something outside the blocks reads the
        skipped ones (Qwen3-VL's DeepStack)."""
        return skips

    def site_module(self, model: torch.nn.Module, kind: str, layer: int) -> torch.nn.Module:
        if kind not in self.site_kinds():
            raise ValueError(f"unknown site kind {kind!r}; known: {self.site_kinds()}")
        if kind.startswith("vision"):
            layers = model.get_submodule(self.vision_layers)
            name = "vision"
        else:
            layers = model.get_submodule(self.decoder_layers)
            name = "decoder"
        if not 0 <= layer < len(layers):
            raise IndexError(
                f"{kind} layer {layer} is outside the model: its {name} has layers 0..{len(layers) - 1}"
            )
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

    def vision_crops(self, model: torch.nn.Module, inputs) -> list[int] | None:
        """How many rows of the vision tower's (rows, patches, width) states each sample of an encoded batch
        has, in order, where that is not one: an image split into crops (Idefics3, LLaVA-OneVision's
        anyres tiles, Gemma 3's pan-and-scan) is several rows of one sample. None: row i is sample i.
        A packed tower (Qwen2-VL: one (patches, width) sequence) is told by its `image_grid_thw`."""
        return None

    def vision_token_grid(self, model: torch.nn.Module, processor, inputs) -> tuple[int, int] | None:
        """(rows, columns) of the image tokens the decoder reads for the first sample of an encoded batch,
        as a grid laid over its image in reading order, or None where they are not one such grid (an image
        split into crops). Read from the processor and the config: a packed tower's patch grid
        (`image_grid_thw`) merged by `spatial_merge_size` (Qwen2-VL), else the image size the processor
        resizes (and crops) to over the tower's patch size, pooled by `pool_tokens`; checked against the
        prompt's number of image tokens."""
        config = model.config
        token = getattr(config, "image_token_id", None)
        token = token if token is not None else config.image_token_index
        n_tokens = int((inputs["input_ids"][0] == token).sum())
        vision = config.vision_config
        grid = inputs.get("image_grid_thw")
        if grid is not None:
            _, height, width = (int(v) for v in grid[0])
            merge = int(getattr(vision, "spatial_merge_size", 1) or 1)
            rows, columns = height // merge, width // merge
        else:
            image_processor = processor.image_processor
            size = image_processor.size
            if getattr(image_processor, "do_center_crop", False) and getattr(
                image_processor, "crop_size", None
            ):
                size = image_processor.crop_size
            height, width = getattr(size, "height", None), getattr(size, "width", None)
            if not (height and width):
                return None
            patch = int(vision.patch_size)
            rows, columns = self.pool_tokens(model, int(height) // patch, int(width) // patch)
        return (rows, columns) if rows * columns == n_tokens else None

    def pool_tokens(self, model: torch.nn.Module, rows: int, columns: int) -> tuple[int, int]:
        """The grid of image tokens a projector makes of a `rows` x `columns` patch grid (one token a patch,
        unless the family pools)."""
        return rows, columns

    def position_ids(self, model: torch.nn.Module, inputs) -> torch.Tensor | None:
        """The decoder's position ids for an encoded batch, as the model's forward would compute them, or
        None where the forward's own are cheap (plain counting). Passes that repeat a batch (patching,
        knockouts) compute them once for the batch and tile them
        (`vlmlib.interventions.resume.repeat_inputs`)."""
        return None

    # ------------------------------------------------------------ prompts

    def prompt(self, processor, question: str, options: PromptOptions = PromptOptions()) -> str:
        raise NotImplementedError

    def text_prompt(self, processor, question: str) -> str:
        """The prompt of a text-only sequence (no image), special tokens written out: what a language
        model of this family is pre-trained on before it sees images."""
        raise NotImplementedError

    def encode(self, processor, images, questions, answers=None, options: PromptOptions = PromptOptions()):
        """Batch of model inputs (right-padded). With `answers`, also `labels` for training."""
        raise NotImplementedError
