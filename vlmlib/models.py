"""Model loading: one entry point for embedded models, local folders and hub ids.

    lm = load_model("paligemma-random")           # an embedded model (see `EMBEDDED`)
    lm = load_model("/path/to/saved/folder")      # anything saved with save_pretrained
    lm = load_model("Qwen/Qwen2-VL-2B-Instruct", device="cuda")

The result bundles the model, its processor and its family (site table + prompt format), and
knows which positions hold vision and text tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .families import Family, UnsupportedModelError, family_for_config

ORGANISM_DIR = Path(__file__).parent / "organisms"


class ModelLoadError(ValueError):
    """A model that cannot be loaded, with what to do about it."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    family: Family
    name: str  # what the user asked for
    trained: bool  # False for random weights: the book labels such runs "untrained"
    description: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    # ------------------------------------------------------------ shape

    @property
    def num_layers(self) -> int:
        return self.family.num_layers(self.model)

    @property
    def num_vision_layers(self) -> int:
        return self.family.num_vision_layers(self.model)

    @property
    def image_token_id(self) -> int:
        config = self.model.config
        token = getattr(config, "image_token_id", None)
        return token if token is not None else config.image_token_index

    # ------------------------------------------------------------ inputs

    def encode(self, images: Sequence, questions: Sequence[str], answers: Sequence[str] | None = None):
        """Right-padded batch on the model's device; with `answers`, `labels` for training."""
        batch = self.family.encode(self.processor, images, list(questions), list(answers) if answers else None)
        dtype = self.model.dtype
        return batch.to(self.device).to(dtype) if hasattr(batch, "to") else batch

    def encode_samples(self, samples: Sequence, with_answers: bool = False):
        answers = [s.answer for s in samples] if with_answers else None
        return self.encode([s.image for s in samples], [s.question for s in samples], answers)

    def vision_mask(self, inputs) -> torch.Tensor:
        return inputs["input_ids"] == self.image_token_id

    def text_mask(self, inputs) -> torch.Tensor:
        """Real (not padding) tokens that are not image tokens."""
        return inputs["attention_mask"].bool() & ~self.vision_mask(inputs)

    def last_index(self, inputs) -> torch.Tensor:
        """Position of each row's final real token (batches are right-padded)."""
        return inputs["attention_mask"].sum(dim=1) - 1

    def token_id(self, text: str) -> int:
        """The first token of `text` (answers are one token; a longer one is cut to its first)."""
        ids = self.processor.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise ValueError(f"{text!r} encodes to no token")
        return ids[0]

    def forward(self, inputs, **kwargs):
        return self.model(**inputs, use_cache=False, **kwargs)


# ---------------------------------------------------------------- embedded models


def _random(builder_name: str):
    def build():
        from . import tiny

        model, processor = getattr(tiny, builder_name)()
        return model, processor, False, "tiny, random weights (untrained): for tests and method demos only"

    return build


# name -> builder returning (model, processor, trained, description)
EMBEDDED: dict[str, Callable] = {
    "paligemma-random": _random("tiny_paligemma"),
    "qwen2vl-random": _random("tiny_qwen2vl"),
}


def embedded_names() -> list[str]:
    shipped = sorted(p.name for p in ORGANISM_DIR.glob("*") if (p / "config.json").is_file())
    return sorted(EMBEDDED) + shipped


# ---------------------------------------------------------------- loading


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def load_model(model: str, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa") -> LoadedModel:
    """An embedded model's name, a local folder, or a Hugging Face hub id."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if model in EMBEDDED:
        net, processor, trained, description = EMBEDDED[model]()
        net.set_attn_implementation(attn_implementation)
        return _finish(net, processor, model, trained, description, dev, torch_dtype)
    organism = ORGANISM_DIR / model
    if "/" not in model and (organism / "config.json").is_file():  # a bare name, never a path
        return _from_pretrained(str(organism), model, dev, torch_dtype, attn_implementation, trained=True,
                                description=f"embedded model organism '{model}', trained here on `shapes`")
    if Path(model).is_dir():
        if not (Path(model) / "config.json").is_file():
            raise ModelLoadError(f"folder {model} has no config.json: pass a folder written by save_pretrained")
        return _from_pretrained(model, model, dev, torch_dtype, attn_implementation, trained=True,
                                description=f"local checkpoint {model}")
    if "/" not in model or model.startswith((".", "/")):
        raise ModelLoadError(f"unknown model {model!r}: not an embedded model ({', '.join(embedded_names())}), "
                             "not an existing local folder, and not a hub id of the form 'org/name'")
    return _from_pretrained(model, model, dev, torch_dtype, attn_implementation, trained=True,
                            description=f"Hugging Face checkpoint {model}")


def _from_pretrained(source: str, name: str, device, dtype, attn_implementation, trained: bool, description: str):
    from transformers import AutoConfig

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as e:
        if Path(source).is_dir():
            raise ModelLoadError(f"cannot read the config in {source}: {e}") from None
        raise ModelLoadError(
            f"cannot load {source!r} from the Hugging Face hub or the local HF cache ({type(e).__name__}). "
            "Without network, provide the weights yourself: download them where there is network "
            f"(`hf download {source}`) and pass that folder as model=..., or copy them into the HF cache "
            "(~/.cache/huggingface/hub) and set HF_HUB_OFFLINE=1.") from None
    family = family_for_config(config)  # raises for text-only or unsupported architectures
    model_cls, processor_cls = _classes(family)
    try:
        processor = processor_cls.from_pretrained(source, local_files_only=offline)
        net = model_cls.from_pretrained(source, dtype=dtype, attn_implementation=attn_implementation,
                                        local_files_only=offline)
    except OSError as e:
        raise ModelLoadError(f"{source!r}: config found but weights or processor files are missing ({e}). "
                             "Download the whole checkpoint (weights, tokenizer, processor configs).") from None
    return _finish(net, processor, name, trained, description, device, dtype)


def _classes(family: Family):
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor, Qwen2VLForConditionalGeneration

    from .tiny import Qwen2VLImageOnlyProcessor

    return {
        "paligemma": (PaliGemmaForConditionalGeneration, PaliGemmaProcessor),
        # Image-only processor: the stock one also loads a video processor, which needs torchvision.
        "qwen2vl": (Qwen2VLForConditionalGeneration, Qwen2VLImageOnlyProcessor),
    }[family.name]


def _finish(net, processor, name, trained, description, device, dtype) -> LoadedModel:
    family = family_for_config(net.config)
    processor.tokenizer.padding_side = "right"  # final token = last real position; see LoadedModel.last_index
    net = net.to(device=device, dtype=dtype).eval()
    return LoadedModel(net, processor, family, name, trained, description, device)


__all__ = ["LoadedModel", "ModelLoadError", "UnsupportedModelError", "load_model", "embedded_names", "EMBEDDED"]
