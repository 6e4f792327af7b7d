"""Model loading: one entry point for embedded models, local folders and hub ids.

    lm = load_model("paligemma-random")           # a named model (see `named_models`)
    lm = load_model("/path/to/saved/folder")      # anything saved with save_pretrained
    lm = load_model("Qwen/Qwen2-VL-2B-Instruct", device="cuda")

The result bundles the model, its processor and its family (site table + prompt format), and
knows which positions hold vision and text tokens.

The defaults run a checkpoint as the paper did: the prompt is "<image> How many objects are in the
image?" and nothing more (no Qwen2-VL system turn, no PaliGemma task prefix: `system_prompt=` and
`task_prefix=` change that), and images keep the processor's own resolution (`max_pixels=` lowers
Qwen2-VL's pixel budget; PaliGemma's resolution is the checkpoint's: the paper's is
google/paligemma-3b-pt-448, 1,024 image tokens). Images are processed by the PIL backend whether or
not torchvision is installed, so that the pixels are the same on every machine
(`image_backend="auto"` lets transformers choose).

A checkpoint folder is checked before loading: missing or truncated weights, tokenizer or processor
files raise `ModelLoadError` naming the file and what to do.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .families import Family, PromptOptions, UnsupportedModelError, family_for_config
from .util import sha256_file


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
    prompt_options: PromptOptions = field(default_factory=PromptOptions)

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
        batch = self.family.encode(
            self.processor, images, list(questions), list(answers) if answers else None, self.prompt_options
        )
        dtype = self.model.dtype
        return batch.to(self.device).to(dtype) if hasattr(batch, "to") else batch

    def prompt(self, question: str) -> str:
        """The text the processor receives for `question` (image placeholders not yet expanded)."""
        return self.family.prompt(self.processor, question, self.prompt_options)

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

    def answer_token_ids(self, answer) -> list[int]:
        """Every token of `answer` as it follows the prompt (Qwen2's tokenizer splits "10" into "1", "0").

        Both families' prompts end on a separator ("\\n" after PaliGemma's prefix, "assistant\\n" for
        Qwen2-VL), so the answer is tokenized on its own, without special tokens, exactly as the
        training labels are. Numbers are accepted (`4` is "4")."""
        if answer is None:
            raise ValueError("answer is None: these samples have no answer to score")
        text = str(answer)
        ids = self.processor.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise ValueError(f"answer {text!r} encodes to no token")
        return list(ids)

    def token_id(self, text) -> int:
        """The first token of `text`; `answer_token_ids` gives all of them."""
        return self.answer_token_ids(text)[0]

    def prompt_settings(self) -> dict:
        """What shaped the inputs, for a page's parameter table and the results file."""
        settings = {
            "system_prompt": self.prompt_options.system_prompt,
            "task_prefix": self.prompt_options.task_prefix,
        }
        size = getattr(self.processor.image_processor, "size", None)
        if getattr(size, "longest_edge", None) and getattr(size, "shortest_edge", None):  # pixel budget
            settings["max_pixels"] = size.longest_edge
        elif getattr(size, "height", None):
            settings["image_size"] = [size.height, size.width]
        return settings

    def native_image_size(self) -> int:
        """The side in pixels of the images this checkpoint expects (`native_image_size`): what a chapter
        draws its synthetic images at, and resizes photographs to, unless `image_size` says otherwise."""
        return native_image_size(self.processor)

    def forward(self, inputs, **kwargs):
        return self.model(**inputs, use_cache=False, **kwargs)

    def last_token_logits(self, inputs, **kwargs) -> torch.Tensor:
        """(batch, vocab) logits at each row's final real token, the LM head applied to those rows only:
        the same numbers as `forward(inputs).logits[row, last]` without a (batch, T, vocab) tensor."""
        hidden = self.forward_base(inputs, **kwargs).last_hidden_state  # after the final norm
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        logits = self.model.lm_head(hidden[rows, self.last_index(inputs)])
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)  # Gemma 2
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def forward_base(self, inputs, **kwargs):
        """The forward pass without the LM head: every decoder layer runs, no logits are computed.
        For passes that read only internal sites (a full-vocabulary logit tensor is 152k-257k wide)."""
        return self.model.get_submodule(self.family.base_model)(**inputs, use_cache=False, **kwargs)


# ---------------------------------------------------------------- named models
#
# Short names ("paligemma-shapes", "qwen2vl-random") for models that ship with an installed package.
# The library knows no such package: catalogues are found through the entry-point group
# `vlmlib.models` (vlmlib's own organisms register theirs in pyproject.toml), each a function that
# returns `NamedModel`s; `register_model` adds one at run time.

MODEL_CATALOGUES = "vlmlib.models"  # the entry-point group


@dataclass(frozen=True)
class NamedModel:
    """A model known by a short name: a folder written by save_pretrained, or a builder of random weights."""

    name: str
    family: str  # the family's name (vlmlib.families)
    folder: Path | None = None  # saved weights, tokenizer and processor
    build: Callable[[], tuple] | None = None  # () -> (model, processor), random weights
    description: str = ""
    replicate_of: str | None = None  # a training-seed replicate of this named model
    seed: int = 0  # its training seed

    @property
    def trained(self) -> bool:
        return self.folder is not None


_REGISTERED: dict[str, NamedModel] = {}


def register_model(named: NamedModel) -> NamedModel:
    """Add a named model for this process (a catalogue's names take precedence)."""
    _REGISTERED[named.name] = named
    return named


def unregister_model(name: str) -> None:
    """Remove a model added with `register_model` (tests)."""
    _REGISTERED.pop(name, None)


@functools.lru_cache(maxsize=1)
def _catalogued() -> dict[str, NamedModel]:
    from importlib.metadata import entry_points

    found: dict[str, NamedModel] = {}
    for entry in entry_points(group=MODEL_CATALOGUES):
        for named in entry.load()():
            found[named.name] = named
    return found


def named_models() -> dict[str, NamedModel]:
    """Every named model: the installed catalogues' and those registered at run time, by name."""
    return {**_REGISTERED, **_catalogued()}


def named_model(name: str) -> NamedModel | None:
    """The named model called `name`, or None (a path or a hub id is never a name)."""
    if "/" in name or os.sep in name:
        return None
    return named_models().get(name)


def embedded_names() -> list[str]:
    """Names of the random-weight models, then of the shipped trained ones."""
    models = named_models().values()
    return sorted(m.name for m in models if not m.trained) + sorted(m.name for m in models if m.trained)


def model_fingerprint(model: str) -> dict:
    """The model's name and its weights: contents hashed for small files (the organisms), name, size and
    modification time for large ones (a multi-GB checkpoint is not read just to fingerprint it)."""
    named = named_model(model)
    folder = named.folder if named is not None and named.folder is not None else Path(model)
    if not folder.is_dir():
        return {"name": model}  # built in code (random weights) or a hub id: the code hash covers the former
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            rel = str(path.relative_to(folder))
            files[rel] = (
                sha256_file(path)[:16] if stat.st_size < 64 << 20 else f"{stat.st_size}:{stat.st_mtime_ns}"
            )
    return {
        "name": model,
        "files": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16],
    }


# ---------------------------------------------------------------- loading


SHARDED = "shard"  # device="shard": accelerate's device_map="auto" over every GPU (then CPU), for checkpoints
# larger than one GPU; the model's inputs go where its embeddings are


DEVICES = ("auto", "cpu", "cuda", "cuda:N", SHARDED)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device a `device` argument names; ValueError naming the choices for an unknown one, or
    for a GPU this machine does not have (checked before anything loads, by the runner too)."""
    device = str(device)
    if device in (SHARDED, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was asked for but torch sees no CUDA GPU; use device='cpu' or 'auto'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: torch sees {torch.cuda.device_count()} GPU(s), cuda:0 up")
    elif resolved.type != "cpu":
        raise ValueError(f"device {device!r} is not supported; use one of {', '.join(DEVICES)}")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}") from None


def load_model(
    model: str,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    system_prompt: str | None = None,
    task_prefix: str = "",
    max_pixels: int | None = None,
    image_backend: str = "pil",
    device_map: str | dict | None = None,
) -> LoadedModel:
    """An embedded model's name, a local folder, or a Hugging Face hub id.

    device         "auto" (a GPU if torch sees one, else the CPU), "cpu", "cuda", "cuda:N", or "shard":
                   the checkpoint spread over every GPU by accelerate (device_map="auto"), for a model
                   larger than one GPU
    device_map     accelerate's device map, passed to from_pretrained ("auto", "balanced", a dict of
                   module -> device); device="shard" is device_map="auto". Needs `pip install accelerate`.
    system_prompt  a system turn for Qwen2-VL (None, the default: none, as the paper ran it)
    task_prefix    text before the question, e.g. "answer en " for PaliGemma pt checkpoints ("" : none)
    max_pixels     Qwen2-VL's pixel budget per image (None: the processor's own, as the paper ran it);
                   image tokens = pixels / (14 * 14 * 4) after resizing to multiples of 28
    image_backend  "pil" (default: the same pixels with or without torchvision) or "auto"
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    options = PromptOptions(system_prompt=system_prompt, task_prefix=task_prefix)
    if image_backend not in ("pil", "auto"):
        raise ValueError(f"image_backend must be 'pil' or 'auto', not {image_backend!r}")
    if device == SHARDED and device_map is None:
        device_map = "auto"
    named = named_model(model)
    if device_map is not None:
        if named is not None and not named.trained:
            raise ValueError(
                f"device_map (device='{SHARDED}') applies to checkpoints loaded from disk; {model!r} is "
                "built in code and fits any device: use device='auto'"
            )
        if importlib.util.find_spec("accelerate") is None:
            raise ModelLoadError(
                "spreading a model over devices (device_map / device='shard') needs accelerate: "
                "pip install accelerate"
            )
    settings = dict(
        options=options, max_pixels=max_pixels, image_backend=image_backend, device_map=device_map
    )
    if named is not None and not named.trained:
        net, processor = named.build()
        net.set_attn_implementation(attn_implementation)
        return wrap_model(
            net, processor, model, False, named.description, dev, torch_dtype, options, max_pixels
        )
    if named is not None:
        return _from_pretrained(
            str(named.folder),
            model,
            dev,
            torch_dtype,
            attn_implementation,
            trained=True,
            description=named.description,
            **settings,
        )
    if Path(model).is_dir():
        if not (Path(model) / "config.json").is_file():
            raise ModelLoadError(
                f"folder {model} has no config.json: pass a folder written by save_pretrained"
            )
        return _from_pretrained(
            model,
            model,
            dev,
            torch_dtype,
            attn_implementation,
            trained=True,
            description=f"local checkpoint {model}",
            **settings,
        )
    if "/" not in model or model.startswith((".", "/")):
        raise ModelLoadError(
            f"unknown model {model!r}: not an embedded model ({', '.join(embedded_names())}), "
            "not an existing local folder, and not a hub id of the form 'org/name'"
        )
    return _from_pretrained(
        model,
        model,
        dev,
        torch_dtype,
        attn_implementation,
        trained=True,
        description=f"Hugging Face checkpoint {model}",
        **settings,
    )


# Set in the config.json of random-weight checkpoints this project writes (stand-ins of the real models),
# so that pages run on them carry the untrained-model warning like the embedded random models.
RANDOM_WEIGHTS_MARKER = "vlmlib_random_weights"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _from_pretrained(
    source: str,
    name: str,
    device,
    dtype,
    attn_implementation,
    trained: bool,
    description: str,
    options: PromptOptions,
    max_pixels: int | None,
    image_backend: str,
    device_map=None,
):
    from transformers import AutoConfig

    offline = _offline()
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as e:
        if Path(source).is_dir():
            raise ModelLoadError(f"cannot read the config in {source}: {e}") from None
        raise ModelLoadError(
            f"cannot load {source!r} from the Hugging Face hub or the local HF cache ({type(e).__name__}). "
            "Without network, provide the weights yourself: download them where there is network "
            f"(`hf download {source}`) and pass that folder as model=..., or copy them into the HF cache "
            "(~/.cache/huggingface/hub) and set HF_HUB_OFFLINE=1."
        ) from None
    family = family_for_config(config)  # raises for text-only or unsupported architectures
    if getattr(
        config, RANDOM_WEIGHTS_MARKER, False
    ):  # a stand-in (vlmlib.organisms.builders.save_standin): never "trained"
        trained, description = False, description + " (random weights: a stand-in of the real structure)"
    folder = Path(source) if Path(source).is_dir() else (_cached_snapshot(source) if offline else None)
    if folder is not None:
        check_checkpoint_files(folder, source)
    model_cls, processor_cls = family.classes()
    backend = {} if image_backend == "auto" else {"backend": image_backend}
    fix = (
        f"download the whole checkpoint again (`hf download {source}`)"
        if folder is None or not Path(source).is_dir()
        else "copy the whole checkpoint folder again (weights, tokenizer and processor files)"
    )
    try:
        processor = processor_cls.from_pretrained(source, local_files_only=offline, **backend)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(
            f"{source!r}: the processor (tokenizer and image processor) does not load "
            f"({type(e).__name__}: {e}); {fix}"
        ) from None
    try:
        placed = {} if device_map is None else {"device_map": device_map}
        net = model_cls.from_pretrained(
            source, dtype=dtype, attn_implementation=attn_implementation, local_files_only=offline, **placed
        )
    except Exception as e:  # safetensors raises its own SafetensorError; name the checkpoint whatever it was
        raise ModelLoadError(
            f"{source!r}: the weights do not load ({type(e).__name__}: {e}); {fix}"
        ) from None
    if device_map is not None:  # placed by accelerate: inputs go where the embeddings are
        device = net.get_input_embeddings().weight.device
    return wrap_model(
        net,
        processor,
        name,
        trained,
        description,
        device,
        dtype,
        options,
        max_pixels,
        placed=device_map is not None,
    )


# ---------------------------------------------------------------- checkpoint files

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # either one: fast (JSON) or SentencePiece
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")  # either one: image settings


def _cached_snapshot(repo_id: str) -> Path | None:
    """The folder of a hub checkpoint in the local HF cache, if its config is there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    config = try_to_load_from_cache(repo_id, "config.json")
    return Path(config).parent if isinstance(config, str) else None


def check_checkpoint_files(folder: str | Path, source: str | None = None) -> None:
    """Raise `ModelLoadError` naming the file if weights, tokenizer or processor files are missing,
    empty or truncated. Reads only the safetensors headers (a few kB), never the weights."""
    folder = Path(folder)
    source = source or str(folder)
    again = (
        f"download the checkpoint again (`hf download {source}`)"
        if not Path(source).is_dir()
        else "copy or save the whole checkpoint again (model.save_pretrained and processor.save_pretrained)"
    )
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(
                f"{index} is not a valid shard index ({type(e).__name__}: {e}); {again}"
            ) from None
        for shard in shards:
            if not (folder / shard).is_file():
                raise ModelLoadError(f"{folder / shard} is missing (listed in {index.name}); {again}")
            _check_safetensors(folder / shard, again)
    elif single.is_file():
        _check_safetensors(single, again)
    elif not any((folder / f).is_file() for f in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise ModelLoadError(
            f"{folder} has no weights (no model.safetensors or model.safetensors.index.json); {again}"
        )
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} has no tokenizer file ({' or '.join(TOKENIZER_FILES)}); "
            f"{again}: the processor's save_pretrained writes them"
        )
    for name in ("tokenizer.json", *PROCESSOR_FILES, "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise ModelLoadError(
                    f"{path} is not valid JSON ({type(e).__name__}: {e}); it may be truncated: {again}"
                ) from None
    if not any((folder / f).is_file() for f in PROCESSOR_FILES):
        raise ModelLoadError(
            f"{folder} has no image-processor settings ({' or '.join(PROCESSOR_FILES)}); "
            f"{again}: the processor's save_pretrained writes them"
        )


def _check_safetensors(path: Path, again: str) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes:
    a file shorter than its header promises was cut off."""
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path} is empty (0 bytes): the download or copy did not finish; {again}")
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        if n is None or 8 + n > size:
            raise ModelLoadError(
                f"{path} is truncated ({size:,} bytes, shorter than its own header); {again}"
            )
        try:
            header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise ModelLoadError(
                f"{path} has a corrupt header ({type(e).__name__}): not a safetensors file; {again}"
            ) from None
    if size < 8 + n + end:
        raise ModelLoadError(
            f"{path} is truncated: {size:,} bytes where its header promises {8 + n + end:,}; {again}"
        )


# The side a dynamic-resolution checkpoint (Qwen2-VL) is shown by default: its pixel budget allows up to
# 3,584 px (12.8 MP, 16,384 image tokens), far more than a study of hundreds of images can run; 448 px gives
# Qwen2-VL-2B 256 image tokens (14 px patches, 2x2 merge), the order of the paper's PaliGemma-448 (1,024).
DYNAMIC_IMAGE_SIDE = 448


def _size_field(size, key):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def native_image_size(processor) -> int:
    """The side in pixels of a square image as the checkpoint's processor expects it.

    Fixed-size processors (PaliGemma 224/448/896, Gemma 3, LLaVA-OneVision's base tile): their height and
    width (a centre crop's, where it crops: LLaVA-1.5's 336). Pixel-budget processors (Qwen2-VL, whose
    `size` holds min_pixels and max_pixels): the largest side within the budget, at most 448 px
    (`DYNAMIC_IMAGE_SIDE`), a multiple of the patch size times the merge size (the organisms' budget of
    64 x 64 pixels gives 64, their training size). Idefics3 (SmolVLM): its longest edge, which it splits
    into tiles. ValueError where the processor says nothing (give `image_size`)."""
    import math

    image_processor = getattr(processor, "image_processor", processor)
    size = getattr(image_processor, "size", None) or {}
    shortest, longest = _size_field(size, "shortest_edge"), _size_field(size, "longest_edge")
    if shortest and longest:  # a pixel budget: (min_pixels, max_pixels)
        step = int(getattr(image_processor, "patch_size", 14) or 14) * int(
            getattr(image_processor, "merge_size", 1) or 1
        )
        side = min(math.isqrt(int(longest)), DYNAMIC_IMAGE_SIDE) // step * step
        least = math.ceil(math.sqrt(int(shortest)) / step) * step
        return max(side, least, step)
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop:
        height, width = _size_field(crop, "height"), _size_field(crop, "width")
        if height and width:
            return int(max(height, width))
    height, width = _size_field(size, "height"), _size_field(size, "width")
    if height and width:
        return int(max(height, width))
    if longest or shortest:
        return int(longest or shortest)
    raise ValueError(
        f"cannot tell what image size {type(image_processor).__name__} expects (size={size!r}); "
        "give image_size (pixels per side)"
    )


def set_max_pixels(processor, max_pixels: int) -> None:
    """Lower (or raise) a dynamic-resolution image processor's pixel budget (Qwen2-VL's max_pixels)."""
    from dataclasses import replace

    size = getattr(processor.image_processor, "size", None)
    if not (getattr(size, "longest_edge", None) and getattr(size, "shortest_edge", None)):
        raise ValueError(
            "max_pixels applies to dynamic-resolution processors (Qwen2-VL); this model's image "
            f"processor resizes to a fixed size ({size}): its resolution is the checkpoint's "
            "(for PaliGemma choose the 224, 448 or 896 px checkpoint)"
        )
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int):
        raise TypeError(f"max_pixels must be an integer number of pixels, not {max_pixels!r}")
    if max_pixels < size.shortest_edge:
        raise ValueError(
            f"max_pixels={max_pixels} is below the processor's min_pixels ({size.shortest_edge}); "
            "give at least that"
        )
    processor.image_processor.size = replace(size, longest_edge=max_pixels)


def wrap_model(
    net,
    processor,
    name,
    trained,
    description,
    device,
    dtype,
    options=PromptOptions(),
    max_pixels=None,
    placed: bool = False,
) -> LoadedModel:
    """A model and processor built in code (or loaded by hand) as a `LoadedModel`: on `device` in `dtype`,
    in eval mode, its family found from its config, its prompt options checked."""
    family = family_for_config(net.config)
    processor.tokenizer.padding_side = "right"  # final token = last real position; see LoadedModel.last_index
    if max_pixels is not None:
        set_max_pixels(processor, max_pixels)
    # a model placed over devices by accelerate stays where it is (moving it would undo the map)
    net = (net if placed else net.to(device=device, dtype=dtype)).eval()
    lm = LoadedModel(net, processor, family, name, trained, description, device, options)
    # a family that refuses an option (PaliGemma: system_prompt) refuses it now, not mid-chapter
    lm.prompt("")
    return lm


__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "NamedModel",
    "PromptOptions",
    "UnsupportedModelError",
    "check_checkpoint_files",
    "embedded_names",
    "load_model",
    "named_model",
    "named_models",
    "register_model",
    "unregister_model",
    "set_max_pixels",
    "native_image_size",
    "DYNAMIC_IMAGE_SIDE",
    "wrap_model",
    "model_fingerprint",
    "RANDOM_WEIGHTS_MARKER",
]
