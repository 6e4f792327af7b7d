"""Train the embedded model organisms: tiny PaliGemma / Qwen2-VL models that answer the counting question.

    python -m vlmlib.organisms.train --family paligemma --out vlmlib/organisms/weights/paligemma-shapes
    python -m vlmlib.organisms.train --family qwen2vl --out vlmlib/organisms/weights/qwen2vl-shapes

This is the recipe of the small `shapes` organisms; `--recipe scenes` runs the deep organisms' recipe
instead (vlmlib.organisms.recipes: the paper's depths, the `scenes` data, resumable checkpoints).

Training follows the staged recipe of adapter-based VLMs, from scratch, on the `shapes` train split:

1. vision  pre-train the vision tower alone: a throw-away linear head reads each grid cell's vision
           features and names what is drawn there (nothing, or a shape and a colour);
2. text    pre-train the decoder on text alone (the captioning prompt and its captions);
3. align   train only the projector (PaliGemma's linear projector, Qwen2-VL's patch merger) on
           image-question-answer triples, everything else frozen;
4. tune    fine-tune everything on a mix of counting questions and captions, the cell head's loss
           kept at a small weight.

Every sample is drawn from the train split's stream: batch b of a stage starts at index
stage * 10^8 + 32 * B * b and takes the next B images (skipping those the caption curriculum leaves
out), so one run never repeats an image and never sees a test image. A run that continues from a
checkpoint starts its steps at 0 again and so replays the same images (the model card says which).
Evaluation uses the test split only: seed 1 picks the checkpoint, seed 0 (the book's) is reported. A
run is deterministic for a seed on one thread. The best checkpoint is saved in 16-bit with its
processor and a `training_log.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlmlib.data import (
    CAPTION_PROMPT,
    COLOURS,
    GRID,
    MAX_OBJECTS,
    PLURALS,
    QUESTION,
    SHAPES,
    make_shapes_sample,
    shapes_samples,
)
from vlmlib.families import family_named
from vlmlib.models import load_model

from . import WEIGHTS_DIR
from .builders import TinyShape, tiny_paligemma, tiny_qwen2vl
from .stages import (
    make_optimizer,
    projector,
    save,
    set_trainable,
    step_optimizer,
    vision_params,
    vision_tower,
)

SELECT_SEED = 1  # test-split seed that picks the best checkpoint during training
REPORT_SEED = 0  # test-split seed reported in the training log (the book's default data)
STAGES = ("vision", "text", "align", "tune")


@dataclass
class TrainConfig:
    """One organism's training run. Step counts are optimizer steps of `batch_size` samples."""

    family: str = "paligemma"  # paligemma | qwen2vl
    out: str | None = None  # folder to save the best checkpoint in (None: don't save)
    seed: int = 0  # weights, data stream and task mix all follow from it
    patch_size: int = 0  # vision patch side; 0: 16 for PaliGemma (one token per grid cell), 8 for Qwen2-VL
    batch_size: int = 32
    lr: float = 1e-3  # peak learning rate (AdamW, linear warmup, cosine decay to 10%)
    warmup: int = 100  # warmup steps of each stage
    weight_decay: float = 0.01
    vision_steps: int = 400
    text_steps: int = 200
    align_steps: int = 200
    tune_steps: int = 3000
    caption_fraction: float = 0.35  # share of captioning samples in the align and tune stages
    caption_curriculum: int = 0  # tune steps over which caption images grow from 1 to 6 objects (0: off)
    cell_weight: float = 0.2  # weight of the cell head's loss during the tune stage
    cell_site: str = "tower"  # where the tune stage's cell head reads: tower output, or projector output
    # (the decoder's input; there a cosine head, so that shape must take a real share of the features)
    init_from: str = ""  # start from a saved organism instead of from scratch: only the tune stage runs
    stop_after: int = 0  # end the tune stage after this many steps, evaluating the last
    # (the schedule still spans tune_steps)
    max_minutes: float = 0.0  # stop the tune stage after this long (0: no limit)
    eval_every: int = 250  # tune steps between held-out evaluations (0: only at the end)
    eval_samples: int = 300  # held-out counting samples per evaluation
    caption_samples: int = 100  # held-out captioning samples per evaluation
    threads: int = 1  # torch threads
    attn_implementation: str = "sdpa"  # for training (the saved model is loaded with any)
    log: list = field(default_factory=list)

    def shape(self) -> TinyShape:
        patch = self.patch_size or (16 if self.family == "paligemma" else 8)
        return TinyShape(patch_size=patch)


# ---------------------------------------------------------------- model pieces


def build(config: TrainConfig):
    builder = {"paligemma": tiny_paligemma, "qwen2vl": tiny_qwen2vl}[config.family]
    model, processor = builder(config.shape(), seed=config.seed)
    processor.tokenizer.padding_side = "right"
    return model, processor


def cell_features(model, family: str, batch=None, tower_output=None) -> torch.Tensor:
    """Vision-tower output per grid cell, before the projector: (images, GRID*GRID, width).

    From `batch` (runs the tower) or from the tower's already computed output."""
    if tower_output is None:
        tower = vision_tower(model, family)
        tower_output = (
            tower(batch["pixel_values"])
            if family == "paligemma"
            else tower(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        )
    states = tower_output.last_hidden_state
    if family == "paligemma":  # (images, tokens, width)
        side = int(math.isqrt(states.shape[1]))
        if side != GRID:  # several patches per cell: average them
            b, _, w = states.shape
            k = side // GRID
            states = states.view(b, GRID, k, GRID, k, w).mean(dim=(2, 4)).reshape(b, GRID * GRID, w)
        return states
    # Qwen2-VL: packed patches in 2x2 merge windows, so 4 consecutive patches are one cell
    merge = model.model.visual.spatial_merge_size**2
    return states.view(-1, GRID * GRID, merge, states.shape[-1]).mean(dim=2)


def projector_cells(model, family: str, output: torch.Tensor) -> torch.Tensor:
    """Projector output (the decoder's image-token input) per grid cell: (images, GRID*GRID, width)."""
    if family == "paligemma":
        b, tokens, w = output.shape
        side = int(math.isqrt(tokens))
        k = side // GRID
        return output.view(b, GRID, k, GRID, k, w).mean(dim=(2, 4)).reshape(b, GRID * GRID, w)
    return output.view(-1, GRID * GRID, output.shape[-1])  # Qwen2-VL: one merged token per cell


class CellHead(torch.nn.Module):
    """Names what each grid cell holds: shape (0 = empty) and colour. Training-time only.

    A cosine head (fixed scale) scores a feature's direction only, so it is satisfied only when the
    classes take a real share of the features, not a tiny direction read with large weights."""

    def __init__(self, width: int, cosine: bool = False, scale: float = 16.0):
        super().__init__()
        self.shape = torch.nn.Linear(width, len(SHAPES) + 1, bias=not cosine)
        self.colour = torch.nn.Linear(width, len(COLOURS), bias=not cosine)
        self.cosine, self.scale = cosine, scale

    def logits(self, layer, f):
        if not self.cosine:
            return layer(f)
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return self.scale * f @ (layer.weight / layer.weight.norm(dim=-1, keepdim=True).clamp_min(1e-6)).T

    def loss(self, features, samples) -> torch.Tensor:
        shape_t = torch.zeros(len(samples), GRID * GRID, dtype=torch.long)
        colour_t = torch.full((len(samples), GRID * GRID), -100, dtype=torch.long)
        for row, s in enumerate(samples):
            for cell, colour, shape in s.objects:
                shape_t[row, cell] = SHAPES.index(shape) + 1
                colour_t[row, cell] = list(COLOURS).index(colour)
        f = features.float()
        loss = torch.nn.functional.cross_entropy(self.logits(self.shape, f).flatten(0, 1), shape_t.flatten())
        return loss + torch.nn.functional.cross_entropy(
            self.logits(self.colour, f).flatten(0, 1), colour_t.flatten()
        )


# ---------------------------------------------------------------- data


def train_batch(config: TrainConfig, stage: str, step: int, caption_fraction: float):
    """Samples of one step and, for each, whether it is a captioning sample. Deterministic.

    A whole batch is one task: counting prompts are short, and a mixed batch pads them to caption
    length. Under the caption curriculum a caption batch holds only images of at most k objects, k
    growing from 1 to MAX_OBJECTS (drawn by skipping the stream's other images)."""
    offset = {s: i for i, s in enumerate(STAGES)}[stage] * 100_000_000
    size = config.shape().image_size
    rng = np.random.default_rng([config.seed, offset, step])
    caption = bool(rng.random() < caption_fraction)
    limit = MAX_OBJECTS
    if caption and stage == "tune" and config.caption_curriculum:
        limit = min(MAX_OBJECTS, 1 + (MAX_OBJECTS * step) // config.caption_curriculum)
    start = offset + step * config.batch_size * 32  # room to skip in
    samples, index = [], start
    while len(samples) < config.batch_size:
        sample = make_shapes_sample(index, config.seed, "train", size)
        if len(sample.objects) <= limit:
            samples.append(sample)
        index += 1
    return samples, [caption] * config.batch_size


def encode(family, processor, samples, captions, with_answers=True):
    questions = [CAPTION_PROMPT if c else QUESTION for c in captions]
    answers = [s.caption if c else s.answer for s, c in zip(samples, captions)] if with_answers else None
    return family.encode(processor, [s.image for s in samples], questions, answers)


def text_batch(config: TrainConfig, processor, step: int):
    """Text-only captioning sequences (no image) for the decoder's pre-training, with labels."""
    samples, _ = train_batch(config, "text", step, 0.0)
    tok = processor.tokenizer
    prefix = [family_named(config.family).text_prompt(processor, CAPTION_PROMPT)] * len(samples)
    texts = [p + s.caption + tok.eos_token for p, s in zip(prefix, samples)]
    batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    n_prefix = len(tok(prefix[0], add_special_tokens=False)["input_ids"])
    labels = batch["input_ids"].clone()
    labels[:, :n_prefix] = -100
    labels[batch["attention_mask"] == 0] = -100
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


# ---------------------------------------------------------------- evaluation

_WORD_SHAPE = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}


def caption_groups(caption: str) -> list[tuple[str, str, str]]:
    """'2 red circles , 1 blue square' -> [('2', 'red', 'circle'), ('1', 'blue', 'square')]."""
    groups = []
    for part in re.split(r" , | and ", caption.strip()):
        words = part.split()
        if len(words) == 3 and words[2] in _WORD_SHAPE:
            groups.append((words[0], words[1], _WORD_SHAPE[words[2]]))
        else:
            groups.append(tuple(words))
    return groups


@torch.no_grad()
def evaluate_counting(model, processor, family, samples, batch_size: int = 100) -> dict:
    """Greedy one-token answers to the counting question: accuracy overall and per true count."""
    model.eval()
    tok = processor.tokenizer
    answer_ids = {str(n): tok.convert_tokens_to_ids(str(n)) for n in range(1, MAX_OBJECTS + 1)}
    hits: dict[str, list[int]] = {str(n): [] for n in range(1, MAX_OBJECTS + 1)}
    predictions = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        batch = encode(family, processor, chunk, [False] * len(chunk), with_answers=False)
        batch.pop("labels", None)
        logits = model(**batch, use_cache=False).logits
        last = batch["attention_mask"].sum(dim=1) - 1
        top = logits[torch.arange(len(chunk)), last].argmax(-1).tolist()
        for s, t in zip(chunk, top):
            hits[s.answer].append(int(t == answer_ids[s.answer]))
            predictions.append(tok.convert_ids_to_tokens(t))
    per_count = {n: (sum(h) / len(h) if h else float("nan")) for n, h in hits.items()}
    overall = sum(sum(h) for h in hits.values()) / len(samples)
    return {
        "accuracy": overall,
        "per_count": per_count,
        "n_per_count": {n: len(h) for n, h in hits.items()},
        "n": len(samples),
    }


@torch.no_grad()
def generate_captions(
    model, processor, family, samples, batch_size: int = 50, max_new_tokens: int = 40
) -> list[str]:
    model.eval()
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        batch = encode(family, processor, chunk, [True] * len(chunk), with_answers=False)
        batch.pop("labels", None)  # prompts are all the same length: no padding to worry about
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        new = ids[:, batch["input_ids"].shape[1] :]
        tok = processor.tokenizer
        special = set(tok.all_special_ids)
        for row in new.tolist():  # word-level vocabulary: words joined by spaces, as the captions are written
            words = []
            for t in row:
                if t == tok.eos_token_id:
                    break
                if t not in special:
                    words.append(tok.convert_ids_to_tokens(t))
            out.append(" ".join(words))
    return out


def expand(groups) -> list | None:
    """[('2', 'red', 'circle')] -> [('red', 'circle'), ('red', 'circle')]; None for a malformed caption."""
    objects = []
    for g in groups:
        if len(g) != 3 or not g[0].isdigit():
            return None
        objects += [g[1:]] * int(g[0])
    return sorted(objects)


def evaluate_captions(model, processor, family, samples) -> dict:
    """Exact captions, and whether the caption names the right shapes (the probing categories)."""
    generated = generate_captions(model, processor, family, samples)
    exact = shapes_ok = objects_ok = 0
    for s, g in zip(samples, generated):
        true, got = caption_groups(s.caption), caption_groups(g)
        exact += int(g == s.caption)
        # the probing categories: the set of shapes named
        shapes_ok += int({t[-1] for t in true} == {t[-1] for t in got if len(t) == 3})
        # every object with its colour, order aside: the multiset of (colour, shape)
        objects_ok += int(expand(true) == expand(got))
    n = len(samples)
    return {
        "exact": exact / n,
        "shapes_named": shapes_ok / n,
        "objects_named": objects_ok / n,
        "n": n,
        "examples": [{"true": s.caption, "generated": g} for s, g in zip(samples[:5], generated[:5])],
    }


@torch.no_grad()
def caption_token_accuracy(model, processor, family, samples) -> dict:
    """Teacher-forced top-1 accuracy of the caption's count, colour and shape words (what a caption
    gets right even when the whole caption is not)."""
    model.eval()
    tok = processor.tokenizer
    kinds = {
        "count": [str(n) for n in range(1, MAX_OBJECTS + 1)],
        "colour": list(COLOURS),
        "shape": list(SHAPES) + list(PLURALS.values()),
    }
    ids = {k: set(tok.convert_tokens_to_ids(words)) for k, words in kinds.items()}
    hits = {k: [] for k in kinds}
    for i in range(0, len(samples), 100):
        chunk = samples[i : i + 100]
        batch = encode(family, processor, chunk, [True] * len(chunk))
        labels = batch.pop("labels")[:, 1:]
        top = model(**batch, use_cache=False).logits[:, :-1].argmax(-1)
        for kind, kind_ids in ids.items():
            mask = torch.isin(labels, torch.tensor(sorted(kind_ids)))
            hits[kind] += (top[mask] == labels[mask]).tolist()
    return {k: sum(h) / len(h) for k, h in hits.items() if h}


def held_out(n: int, seed: int, image_size: int = 64):

    return shapes_samples(n, seed, "test", image_size)


# ---------------------------------------------------------------- training


def score(counting: dict, captions: dict) -> float:
    """Checkpoint choice: counting until it passes the bar, then captions (with counting as tie-break)."""
    passes = counting["accuracy"] >= 0.9 and min(counting["per_count"].values()) >= 0.8
    if not passes:
        return counting["accuracy"] + min(counting["per_count"].values())
    return 2 + captions["shapes_named"] + captions["objects_named"] + 0.1 * counting["accuracy"]


def train(config: TrainConfig, verbose: bool = True):
    """Run every stage; returns (model, processor, log). Saves the best checkpoint to config.out."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, verbose)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, verbose: bool):
    torch.manual_seed(config.seed)
    family = family_named(config.family)
    log: dict = {"config": {k: v for k, v in asdict(config).items() if k != "log"}, "curve": [], "stages": {}}
    steps = {"vision": config.vision_steps, "text": config.text_steps, "align": config.align_steps}
    if config.init_from:
        model_cls, processor_cls = family.classes()
        model = model_cls.from_pretrained(config.init_from, dtype=torch.float32)
        processor = processor_cls.from_pretrained(config.init_from)
        processor.tokenizer.padding_side = "right"
        steps = dict.fromkeys(steps, 0)  # the earlier stages are in the starting checkpoint
        previous = json.loads((Path(config.init_from) / "training_log.json").read_text())
        previous.pop("report", None)
        log["init_from_log"] = previous
    else:
        model, processor = build(config)
    model.set_attn_implementation(config.attn_implementation)
    model.train()
    width = (
        model.config.vision_config.hidden_size
        if config.family == "paligemma"
        else model.config.vision_config.embed_dim
    )
    torch.manual_seed(config.seed + 1)
    head = CellHead(width)
    tune_head = head
    if config.cell_site == "projector":
        tune_head = CellHead(model.config.text_config.hidden_size, cosine=True)
    elif config.cell_site != "tower":
        raise ValueError(f"cell_site must be 'tower' or 'projector', not {config.cell_site!r}")
    t0 = time.time()
    select = (
        held_out(config.eval_samples, SELECT_SEED, config.shape().image_size) if config.eval_every else []
    )
    select_caps = (
        held_out(config.caption_samples, SELECT_SEED + 100, config.shape().image_size)
        if config.eval_every
        else []
    )
    best = -1.0

    def say(msg):
        if verbose:
            print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    def note(stage, step, loss, extra=None):
        row = {
            "stage": stage,
            "step": step,
            "loss": round(loss.item(), 5),
            "time_s": round(time.time() - t0, 1),
        }
        if extra:
            row.update(extra)
        log["curve"].append(row)

    # 1. vision tower + cell head
    params = vision_params(model, config.family) + list(head.parameters())
    set_trainable(model, params)
    opt, sched = make_optimizer(params, config, steps["vision"])
    for step in range(steps["vision"]):
        samples, captions = train_batch(config, "vision", step, 0.0)
        batch = encode(family, processor, samples, captions, with_answers=False)
        loss = head.loss(cell_features(model, config.family, batch), samples)
        step_optimizer(loss, opt, sched, params)
        if step % 50 == 0 or step == steps["vision"] - 1:
            note("vision", step, loss)
            say(f"vision {step} cell loss {loss.item():.4f}")
    log["stages"]["vision"] = round(time.time() - t0, 1)

    # 2. decoder on text alone
    decoder = model.model.language_model
    params = list(decoder.parameters()) + [
        p for p in model.lm_head.parameters() if all(p is not q for q in decoder.parameters())
    ]
    set_trainable(model, params)
    opt, sched = make_optimizer(params, config, steps["text"])
    for step in range(steps["text"]):
        loss = model(**text_batch(config, processor, step), use_cache=False).loss
        step_optimizer(loss, opt, sched, params)
        if step % 50 == 0 or step == steps["text"] - 1:
            note("text", step, loss)
            say(f"text {step} loss {loss.item():.4f}")
    log["stages"]["text"] = round(time.time() - t0, 1)

    # 3. projector alone
    params = list(projector(model, config.family).parameters())
    set_trainable(model, params)
    opt, sched = make_optimizer(params, config, steps["align"])
    for step in range(steps["align"]):
        samples, captions = train_batch(config, "align", step, config.caption_fraction)
        loss = model(**encode(family, processor, samples, captions), use_cache=False).loss
        step_optimizer(loss, opt, sched, params)
        if step % 50 == 0 or step == steps["align"] - 1:
            note("align", step, loss)
            say(f"align {step} loss {loss.item():.4f}")
    log["stages"]["align"] = round(time.time() - t0, 1)

    # 4. everything, with the cell head's loss kept on the vision tower
    params = list(model.parameters()) + list(tune_head.parameters())
    set_trainable(model, params)
    opt, sched = make_optimizer(params, config, config.tune_steps)
    tune_start = time.time()
    n_seen = 0
    captured = {}
    site = (
        vision_tower(model, config.family) if config.cell_site == "tower" else projector(model, config.family)
    )
    hook = site.register_forward_hook(lambda m, a, o: captured.__setitem__("out", o))
    for step in range(config.tune_steps):
        if config.stop_after and step >= config.stop_after:
            break
        samples, captions = train_batch(config, "tune", step, config.caption_fraction)
        batch = encode(family, processor, samples, captions)
        model.train()
        loss = model(**batch, use_cache=False).loss
        if config.cell_weight:
            out = captured.pop("out")
            features = (
                cell_features(model, config.family, tower_output=out)
                if config.cell_site == "tower"
                else projector_cells(model, config.family, out)
            )
            cells = tune_head.loss(features, samples)
            loss = loss + config.cell_weight * cells
        step_optimizer(loss, opt, sched, params)
        n_seen += len(samples)
        last = step == config.tune_steps - 1 or step + 1 == config.stop_after
        out_of_time = config.max_minutes and (time.time() - tune_start) > 60 * config.max_minutes
        if step % 50 == 0:
            note("tune", step, loss, {"samples_per_s": round(n_seen / (time.time() - tune_start), 1)})
            say(f"tune {step} loss {loss.item():.4f} ({n_seen / (time.time() - tune_start):.1f} samples/s)")
        if config.eval_every and (step % config.eval_every == config.eval_every - 1 or last or out_of_time):
            result = evaluate_counting(model, processor, family, select)
            caps = evaluate_captions(model, processor, family, select_caps)
            note(
                "tune",
                step,
                loss,
                {
                    "heldout_count_accuracy": result["accuracy"],
                    "per_count": result["per_count"],
                    "caption_shapes_named": caps["shapes_named"],
                    "caption_exact": caps["exact"],
                },
            )
            say(
                f"  held-out counting {result['accuracy']:.3f} "
                + " ".join(f"{n}:{a:.2f}" for n, a in result["per_count"].items())
                + f" | captions exact {caps['exact']:.2f} shapes {caps['shapes_named']:.2f}"
            )
            if score(result, caps) > best and config.out:
                best = score(result, caps)
                log["best_step"] = step
                log["tune_samples_per_s"] = round(n_seen / (time.time() - tune_start), 1)
                save(model, processor, config.out, log)
                say(f"  saved best to {config.out}")
            model.train()
        if out_of_time:
            say(f"time budget of {config.max_minutes} min reached at tune step {step}")
            break
    hook.remove()
    log["stages"]["tune"] = round(time.time() - t0, 1)
    log["tune_steps_done"] = n_seen // config.batch_size
    model.eval()
    return model, processor, log


def final_report(out: str | Path, n_count: int = 600, n_caption: int = 200) -> dict:
    """Reload the saved checkpoint through the project loader and measure it on the report seed."""
    out = Path(out)
    lm = load_model(str(out), device="cpu", dtype="float32", attn_implementation="eager")
    fam = lm.family
    samples = held_out(n_count, REPORT_SEED)
    counting = evaluate_counting(lm.model, lm.processor, fam, samples)
    captions = evaluate_captions(lm.model, lm.processor, fam, held_out(n_caption, REPORT_SEED)[:n_caption])
    captions["word_accuracy"] = caption_token_accuracy(
        lm.model, lm.processor, fam, held_out(n_caption, REPORT_SEED)
    )
    batch = lm.encode_samples(samples[:1])
    batch.pop("labels", None)
    with torch.no_grad():
        lm.model(**batch, use_cache=False)
        t = time.perf_counter()
        for _ in range(20):
            lm.model(**batch, use_cache=False)
    forward_ms = (time.perf_counter() - t) / 20 * 1000
    log = json.loads((out / "training_log.json").read_text())
    log["report"] = {
        "split": "test",
        "seed": REPORT_SEED,
        "counting": counting,
        "captions": captions,
        "forward_ms_per_sample_cpu_1_thread": round(forward_ms, 2),
        "parameters": sum(p.numel() for p in lm.model.parameters()),
    }
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    return log["report"]


def _phases(log: dict) -> list[dict]:
    """A log and the logs of the checkpoints it continued from, oldest first."""
    phases = [log]
    while "init_from_log" in phases[0]:
        phases.insert(0, phases[0]["init_from_log"])
    return phases


def plot_training(png: str | Path, folders=None):
    """Training curves of the shipped organisms: tune-stage loss, held-out counting accuracy and
    held-out captions naming the right shapes. A continued run is drawn after the checkpoint it
    continued from (dotted vertical line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folders = folders or [WEIGHTS_DIR / "paligemma-shapes", WEIGHTS_DIR / "qwen2vl-shapes"]
    # Stacked at the book's column width (6.8 in), so the page never shrinks the legends and ticks.
    fig, (ax_loss, ax_acc, ax_cap) = plt.subplots(3, 1, figsize=(6.8, 8.4), sharex=True)
    for folder in map(Path, folders):
        losses = {True: [], False: []}  # the step's task, as train_batch drew it
        evals, offset, colour = [], 0, None
        phases = _phases(json.loads((folder / "training_log.json").read_text()))
        for i, log in enumerate(phases):
            config = TrainConfig(
                **{k: v for k, v in log["config"].items() if k in TrainConfig.__dataclass_fields__}
            )
            # an earlier phase counts up to the checkpoint the next one started from
            stop = log.get("best_step", 10**9) if i + 1 < len(phases) else 10**9
            for r in log["curve"]:
                if r["stage"] != "tune" or r["step"] > stop:
                    continue
                if "heldout_count_accuracy" in r:
                    evals.append((offset + r["step"], r))
                else:
                    caption = bool(
                        np.random.default_rng([config.seed, 3 * 100_000_000, r["step"]]).random()
                        < config.caption_fraction
                    )
                    losses[caption].append((offset + r["step"], r["loss"]))
            if i + 1 < len(phases):
                offset += stop + 1
                for ax in (ax_loss, ax_acc, ax_cap):
                    ax.axvline(offset, color="grey", lw=0.8, ls=":")
        (line,) = ax_loss.plot(
            *zip(*losses[False]), "o-", ms=2, lw=0.8, label=f"{folder.name}: counting batches"
        )
        colour = line.get_color()
        ax_loss.plot(
            *zip(*losses[True]),
            "^--",
            ms=2,
            lw=0.8,
            color=colour,
            alpha=0.7,
            label=f"{folder.name}: caption batches",
        )
        steps = [s for s, _ in evals]
        ax_acc.plot(
            steps,
            [r["heldout_count_accuracy"] for _, r in evals],
            "o-",
            ms=3,
            color=colour,
            label=f"{folder.name}: overall",
        )
        ax_acc.plot(
            steps,
            [min(r["per_count"].values()) for _, r in evals],
            "s--",
            ms=3,
            color=colour,
            alpha=0.6,
            label=f"{folder.name}: worst count",
        )
        ax_cap.plot(
            steps,
            [r["caption_shapes_named"] for _, r in evals],
            "o-",
            ms=3,
            color=colour,
            label=f"{folder.name}: right shapes",
        )
        ax_cap.plot(
            steps,
            [r["caption_exact"] for _, r in evals],
            "s--",
            ms=3,
            color=colour,
            alpha=0.6,
            label=f"{folder.name}: exact",
        )
    ax_loss.set(ylabel="training loss\n(answer + cell head)", yscale="log")
    for bar in (0.9, 0.8):
        ax_acc.axhline(bar, color="grey", lw=0.8, ls="--")
    ax_acc.set(ylabel="held-out\ncounting accuracy", ylim=(0, 1.02))
    ax_cap.set(xlabel="tune step", ylabel="held-out captions", ylim=(0, 1.02))
    for ax, where in ((ax_loss, "upper right"), (ax_acc, "lower right"), (ax_cap, "lower right")):
        ax.legend(fontsize=7, ncols=2, loc=where)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    recipe = "shapes"  # --recipe scenes: the deep organisms' recipe (vlmlib.organisms.recipes)
    for i, arg in enumerate(argv):
        if arg == "--recipe" or arg.startswith("--recipe="):
            recipe = arg.split("=", 1)[1] if "=" in arg else argv[i + 1]
            argv = argv[:i] + argv[i + (1 if "=" in arg else 2) :]
            break
    if recipe == "scenes":
        from .recipes import main as scenes_main

        return scenes_main(argv)
    if recipe != "shapes":
        raise SystemExit(
            f"unknown recipe {recipe!r}: use shapes (the pocket organisms) or scenes (the deep ones)"
        )
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, f in TrainConfig.__dataclass_fields__.items():
        if name == "log":
            continue
        default = f.default
        kind = type(default) if default is not None else str
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=default)
    parser.add_argument("--report-only", action="store_true", help="only re-measure the saved checkpoint")
    parser.add_argument(
        "--plot", default=None, help="only draw the shipped organisms' training curves to this PNG"
    )
    args = vars(parser.parse_args(argv))
    if args.pop("plot") is not None:
        return plot_training(parser.parse_args(argv).plot)
    report_only = args.pop("report_only")
    config = TrainConfig(**args)
    if not report_only:
        train(config)
    if config.out:
        torch.set_num_threads(config.threads)
        report = final_report(config.out)
        c = report["counting"]
        print(
            f"report (test seed {REPORT_SEED}, n={c['n']}): counting {c['accuracy']:.3f} "
            + " ".join(f"{n}:{a:.2f}" for n, a in c["per_count"].items())
            + f" | captions exact {report['captions']['exact']:.2f}"
            + f" shapes {report['captions']['shapes_named']:.2f}"
            + f" objects {report['captions']['objects_named']:.2f}"
            + f" words {report['captions']['word_accuracy']}"
            + f" | {report['forward_ms_per_sample_cpu_1_thread']} ms/forward"
        )


if __name__ == "__main__":
    main()
