"""Qwen3-VL: a ViT on packed patches (16 px, learned position embeddings interpolated to each image's grid,
2-D rotary positions) with a 2 x 2 patch merger (the projector), a Qwen3 decoder (q/k norms) with
interleaved multimodal rotary positions, and DeepStack.

DeepStack. Besides the merger's output, which becomes the image tokens' embeddings in H^(0), the tower's
outputs after a few of its blocks (`deepstack_visual_indexes`: 5, 11 and 17 of Qwen3-VL-2B's 24) each go
through a merger of their own (`visual.deepstack_merger_list`), and the k-th of them is *added* to the
residual stream at the image-token positions right after decoder layer k (k = 0, 1, 2). transformers does
that in `Qwen3VLTextModel._deepstack_process`, a method called between two decoder layers, outside any
module: no hook on a decoder layer sees it. This family makes it a site (`install_deepstack_sites`,
on first use of a site of the model; the computation is unchanged to the bit):

    deepstack.k   what DeepStack adds to the residual after decoder layer k: (batch, seq, width), the
                  merged vision features at the image positions, zero elsewhere; readable and patchable
                  (a patch replaces what is added: zeroing it removes the injection)
    resid.k       for k < len(deepstack_visual_indexes): H^(k+1) *after* the injection, the state decoder
                  layer k + 1 reads (the output of decoder layer k plus deepstack.k)

so that in those layers the residual identity has a third term,

    H^(k+1) = H^(k) + attn.k + mlp.k + deepstack.k,

and the library counts it (`Family.residual_terms`): the observation engine's identity check and its
`injection_norm` reading, the tests' identity. In the other layers H^(l+1) = H^(l) + attn.l + mlp.l as in
every family. A run that resumes from a clean state (lean patching, knockouts) may not skip a block whose
skipping would lose or repeat an injection (`resumable`).

Prompt: the Qwen3-VL Instruct chat template, which (unlike Qwen2-VL-Instruct's) adds no default system
turn: one user turn of the image and the question is exactly the paper's setting. Processor: image-only
(Qwen3-VL's video processor needs torchvision); it returns `mm_token_type_ids`, which the rotary index
needs. Vision-tower readings are Qwen2-VL's (packed patches, one contiguous run per sample).
"""

from __future__ import annotations

from .qwen2vl import Qwen2VLFamily

DEEPSTACK = "deepstack"  # the site kind of the DeepStack injection


def image_only_processor_class():
    """Qwen3-VL's processor without its video processor (which needs torchvision, see DESIGN.md)."""
    global _IMAGE_ONLY_PROCESSOR
    if _IMAGE_ONLY_PROCESSOR is None:
        from transformers import Qwen3VLProcessor

        class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
            """Qwen3-VL's processor without its video processor (which needs torchvision)."""

            @classmethod
            def get_attributes(cls):
                return ["image_processor", "tokenizer"]

        _IMAGE_ONLY_PROCESSOR = Qwen3VLImageOnlyProcessor
    return _IMAGE_ONLY_PROCESSOR


_IMAGE_ONLY_PROCESSOR = None
_MODULES = None


def _deepstack_modules():
    """(DeepStackInjection, DeepStackStep): built on first use, so that importing the family imports no
    torch.nn classes it does not need."""
    global _MODULES
    if _MODULES is None:
        import torch

        class DeepStackInjection(torch.nn.Module):
            """What DeepStack adds to the residual after one decoder layer: the merged vision features at
            the image positions, zeros elsewhere (the site `deepstack.k`)."""

            def forward(self, hidden_states, visual_pos_masks, visual_embeds):
                added = torch.zeros_like(hidden_states)
                added[visual_pos_masks.to(hidden_states.device)] = visual_embeds.to(
                    hidden_states.device, hidden_states.dtype
                )
                return added

        class DeepStackStep(torch.nn.Module):
            """The residual after one decoder layer and its injection (the site `resid.k` of a DeepStack
            layer): the same sum as transformers' `_deepstack_process`, bit for bit (x + 0 = x)."""

            def __init__(self):
                super().__init__()
                self.injection = DeepStackInjection()

            def forward(self, hidden_states, visual_pos_masks, visual_embeds):
                return hidden_states + self.injection(hidden_states, visual_pos_masks, visual_embeds)

        _MODULES = (DeepStackInjection, DeepStackStep)
    return _MODULES


# The text model's attribute that holds the DeepStack steps (a ModuleList without parameters: nothing is
# added to the state dict, save_pretrained writes the checkpoint as it was).
STEPS = "vlmlib_deepstack"


def install_deepstack_sites(model, text_model_path: str = "model.language_model"):
    """Make the DeepStack injection a module of `model` (idempotent): `_deepstack_process` of the text
    model, called by transformers after each of the first decoder layers with that layer's vision
    features, now runs `<text model>.vlmlib_deepstack[k]`, whose output is the residual after the
    injection and whose child `injection` outputs what is added. The layer k is the index of the features
    in the `deepstack_visual_embeds` list the text model was called with (read by a pre-hook)."""
    import torch

    text = model.get_submodule(text_model_path)
    if hasattr(text, STEPS):
        return getattr(text, STEPS)
    _, step = _deepstack_modules()
    depth = len(model.config.vision_config.deepstack_visual_indexes)
    steps = torch.nn.ModuleList([step() for _ in range(depth)])
    setattr(text, STEPS, steps)
    calls = {"embeds": ()}

    def remember(module, args, kwargs):
        calls["embeds"] = kwargs.get("deepstack_visual_embeds") or ()

    def process(hidden_states, visual_pos_masks, visual_embeds):
        layer = next((i for i, e in enumerate(calls["embeds"]) if e is visual_embeds), None)
        if layer is None or layer >= depth:
            raise RuntimeError(
                "DeepStack features reached the decoder outside a call of its text model with "
                "`deepstack_visual_embeds`: the DeepStack site cannot tell their layer"
            )
        return steps[layer](hidden_states, visual_pos_masks, visual_embeds)

    text.register_forward_pre_hook(remember, with_kwargs=True)
    text._deepstack_process = process  # the instance's, called as self._deepstack_process(...)
    return steps


class Qwen3VLFamily(Qwen2VLFamily):
    # Qwen/Qwen3-VL-2B-Instruct's chat template (chat_template.json) renders a system message only when one
    # is given (no default system turn), a user turn's image as <|vision_start|><|image_pad|><|vision_end|>
    # and its text as it is, then "<|im_start|>assistant\n": Qwen2-VL's markup (USER_TURN, SYSTEM_TURN).
    # Qwen3's tokenizer has no BOS: the prompt starts with <|im_start|>.

    def classes(self):
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration, image_only_processor_class()

    def position_ids(self, model, inputs):
        """(3, batch, T) interleaved multimodal rotary positions, as the model's forward computes them (from
        the processor's `mm_token_type_ids` and `image_grid_thw`)."""
        return model.get_submodule(self.base_model).compute_3d_position_ids(
            input_ids=inputs["input_ids"],
            inputs_embeds=None,
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            attention_mask=inputs.get("attention_mask"),
            past_key_values=None,
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
        )

    # ------------------------------------------------------------ DeepStack

    def deepstack_layers(self, model) -> int:
        """How many decoder layers DeepStack adds to (after layers 0 .. n-1)."""
        return len(model.config.vision_config.deepstack_visual_indexes)

    def site_kinds(self):
        return (*super().site_kinds(), DEEPSTACK)

    def residual_terms(self, model, layer):
        return (DEEPSTACK,) if layer < self.deepstack_layers(model) else ()

    def site_layers(self, model, kind):
        return self.deepstack_layers(model) if kind == DEEPSTACK else super().site_layers(model, kind)

    def site_module(self, model, kind, layer):
        depth = self.deepstack_layers(model)
        if kind == DEEPSTACK:
            if not 0 <= layer < depth:
                raise IndexError(
                    f"deepstack layer {layer} is outside the model: DeepStack adds to the residual after "
                    f"decoder layers 0..{depth - 1}"
                )
            return install_deepstack_sites(model)[layer].injection
        if kind == "resid" and 0 <= layer < min(depth, self.num_layers(model)):
            return install_deepstack_sites(model)[layer]  # H^(layer+1) after the injection
        return super().site_module(model, kind, layer)

    def resumable(self, model, skips):
        """Lean runs resume a stack at its block first-1, which returns the clean state there (`resid` /
        `vision`), the blocks before it passing their input through. The decoder may resume only past the
        DeepStack layers (resid.k of a DeepStack layer already holds its injection, which would be added a
        second time). The tower may be skipped only where the DeepStack mergers still read the states they
        read in the clean run (no DeepStack index before block first-1), or where the decoder resumes past
        the DeepStack layers, so that what they would inject is never used."""
        depth = self.deepstack_layers(model)
        indexes = model.config.vision_config.deepstack_visual_indexes
        decoder = [
            (path, first) for path, first in skips if path == self.decoder_layers and first - 1 >= depth
        ]
        out = []
        for path, first in skips:
            if path == self.decoder_layers:
                keep = bool(decoder)
            elif path == self.vision_layers:
                keep = bool(decoder) or first - 1 <= min(indexes, default=first)
            else:
                keep = True
            if keep:
                out.append((path, first))
        return out


QWEN3VL = Qwen3VLFamily(
    name="qwen3vl",
    title="Qwen3-VL",
    model_types=("qwen3_vl",),
    decoder_layers="model.language_model.layers",
    vision_tower="model.visual",
    vision_layers="model.visual.blocks",
    projector="model.visual.merger",
    vision_attn_contribution="attn",
    # Qwen/Qwen3-VL-2B-Instruct (config.json): a 28-layer Qwen3 decoder, a 24-block ViT; DeepStack from
    # blocks 5, 11, 17 into decoder layers 0, 1, 2
    reference_checkpoint="Qwen3-VL-2B",
    in_paper=False,
    reference_depths=(("decoder", 28), ("vision tower", 24)),
)
