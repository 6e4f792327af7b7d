"""The model organisms: small PaliGemma and Qwen2-VL models built with transformers' own classes,
trained here by a committed recipe, shipped with the project (the side wing: uses the library only).

    builders.py   tiny random-weight models and stand-ins of the real checkpoints' structure
    train.py      the training recipe (`python -m vlmlib.organisms.train --help`)
    recipes.py    the deep organisms' recipe (issue 24: the paper's depths, `scenes`, resumable):
                  `python -m vlmlib.organisms.train --recipe scenes --help`, scripts/train_deep.sh
    weights/      the shipped organisms, one folder each (save_pretrained), with their training logs
    checkpoints/  resumable states of deep organisms in training (<name>-seed<N>/current)

`catalogue()` names them for `vlmlib.models.load_model` (registered as the entry point
`vlmlib.models` in pyproject.toml): the library finds them without importing this package.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vlmlib.families import family_of_model_type
from vlmlib.models import NamedModel

WEIGHTS_DIR = Path(__file__).parent / "weights"
# A training-seed replicate of an organism: '<organism>-seed<N>' (the shipped organism is seed 0).
REPLICATE_NAME = re.compile(r"^(?P<base>.+)-seed(?P<seed>\d+)$")
# The book's default model of each family: its part runs on it (vlmlib.book).
DEFAULT_ORGANISMS = {"paligemma": "paligemma-shapes", "qwen2vl": "qwen2vl-shapes"}
# The deep organisms of issue 24 shipped so far (the `scenes` recipe, the paper's depths; not yet the
# book's default): tests/test_deep_organisms.py holds each to its bars.
DEEP_ORGANISMS = ("paligemma-scenes", "qwen2vl-scenes")
# Families with a random-weight test model only (vlmlib/organisms/family_models.py), no organism.
OTHER_FAMILIES = ("llava", "qwen25vl", "qwen3vl", "gemma3", "idefics3", "llavaonevision")
RANDOM_DESCRIPTION = "tiny, random weights (untrained): for tests and method demos only"


def finished(folder: Path) -> bool:
    """A trained organism: weights, and a training log with the final report (written last by
    the recipe; a run still training has saved its best checkpoint so far, without it)."""
    try:
        return (folder / "config.json").is_file() and "report" in json.loads(
            (folder / "training_log.json").read_text()
        )
    except (OSError, ValueError):
        return False


def _random(family: str, builder: str, module: str = "builders") -> NamedModel:
    def build():
        from . import builders, family_models

        return getattr({"builders": builders, "family_models": family_models}[module], builder)()

    return NamedModel(f"{family}-random", family, build=build, description=RANDOM_DESCRIPTION)


def _shipped(folder: Path) -> NamedModel | None:
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
    family = family_of_model_type(model_type)
    if family is None:
        return None
    match = REPLICATE_NAME.match(folder.name)
    replicate_of = match["base"] if match and finished(folder) else None
    return NamedModel(
        folder.name,
        family.name,
        folder=folder,
        replicate_of=replicate_of,
        seed=int(match["seed"]) if match else 0,
        description=f"embedded model organism '{folder.name}', trained here on "
        + ("`scenes`" if "-scenes" in folder.name else "`shapes`"),
    )


def catalogue(weights_dir: Path = WEIGHTS_DIR) -> list[NamedModel]:
    """The random-weight test models and every shipped organism (a folder with a config.json)."""
    shipped = (_shipped(p) for p in sorted(weights_dir.glob("*")) if (p / "config.json").is_file())
    return [
        _random("paligemma", "tiny_paligemma"),
        _random("qwen2vl", "tiny_qwen2vl"),
        # the other families (issue 25): random weights only, for tests
        *(_random(family, f"tiny_{family}", "family_models") for family in OTHER_FAMILIES),
        *filter(None, shipped),
    ]
