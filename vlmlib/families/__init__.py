"""The model families, registered in one place: a family is one file in this package.

    family = family_for_config(model.config)   # the family of a checkpoint, or UnsupportedModelError
    family_named("qwen2vl")                    # by name
    register_family(MY_FAMILY)                 # a family defined elsewhere (see tests/toy_family.py)

`base.py` says what a family holds (its site table and site kinds, prompt options, classes).
"""

from __future__ import annotations

from .base import SITE_KINDS, Family, PromptOptions
from .gemma3 import GEMMA3
from .idefics3 import IDEFICS3
from .llava import LLAVA
from .llava_onevision import LLAVA_ONEVISION
from .paligemma import PALIGEMMA
from .qwen2_5_vl import QWEN2_5_VL
from .qwen2vl import QWEN2VL
from .qwen3vl import QWEN3VL

_REGISTRY: dict[str, Family] = {}


class UnsupportedModelError(ValueError):
    pass


def register_family(family: Family) -> Family:
    """Add a family; its name and model types must be new (replacing a family is refused)."""
    if family.name in _REGISTRY:
        raise ValueError(f"a family named {family.name!r} is registered already")
    taken = {t for f in _REGISTRY.values() for t in f.model_types} & set(family.model_types)
    if taken:
        raise ValueError(f"model types {sorted(taken)} belong to a registered family already")
    _REGISTRY[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family added with `register_family` (tests)."""
    _REGISTRY.pop(name, None)


def families() -> tuple[Family, ...]:
    """Every registered family, in registration order."""
    return tuple(_REGISTRY.values())


def family_named(name: str) -> Family:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedModelError(f"no family named {name!r}; families: {', '.join(_REGISTRY)}") from None


def family_of_model_type(model_type: str | None) -> Family | None:
    return next((f for f in _REGISTRY.values() if model_type in f.model_types), None)


def supported_model_types() -> str:
    return ", ".join(t for f in _REGISTRY.values() for t in f.model_types)


def family_for_config(config) -> Family:
    """The family of a transformers config, or a clear error for a text-only or unsupported model."""
    model_type = getattr(config, "model_type", None)
    family = family_of_model_type(model_type)
    if family is not None:
        return family.for_config(config)
    if getattr(config, "vision_config", None) is None:
        raise UnsupportedModelError(
            f"model type {model_type!r} is a text-only model (its config has no vision tower); this toolkit "
            f"studies vision-language models of the families: {supported_model_types()}"
        )
    raise UnsupportedModelError(
        f"model type {model_type!r} is not a supported vision-language family yet; supported: "
        f"{supported_model_types()}. A new family is one file in vlmlib/families/ (see paligemma.py), "
        "registered in vlmlib/families/__init__.py or with register_family"
    )


for _family in (PALIGEMMA, QWEN2VL, LLAVA, QWEN2_5_VL, QWEN3VL, GEMMA3, IDEFICS3, LLAVA_ONEVISION):
    register_family(_family)

__all__ = [
    "SITE_KINDS",
    "Family",
    "PromptOptions",
    "UnsupportedModelError",
    "PALIGEMMA",
    "QWEN2VL",
    "LLAVA",
    "QWEN2_5_VL",
    "QWEN3VL",
    "GEMMA3",
    "IDEFICS3",
    "LLAVA_ONEVISION",
    "register_family",
    "unregister_family",
    "families",
    "family_named",
    "family_of_model_type",
    "family_for_config",
    "supported_model_types",
]
