"""The deep organisms' recipe (issue 24): the paper's decoder depths, trained as adapter-based VLMs are.

    python -m vlmlib.organisms.train --recipe scenes --family paligemma --seed 0 \\
        --checkpoint vlmlib/organisms/checkpoints/paligemma-scenes-seed0 \\
        --out vlmlib/organisms/weights/paligemma-scenes

(`python -m vlmlib.organisms.recipes` is the same.) Models: transformers' own PaliGemma and Qwen2-VL
classes at the paper's decoder depths (18 and 28 layers), 16-layer vision towers, 128-pixel images
seen as 64 image tokens (PaliGemma: patches of 16; Qwen2-VL: patches of 8 merged 2x2), data:
`vlmlib.data.scenes`. Four stages, each from the checkpoint the previous one left:

1. text    the language model alone (decoder, embeddings, head) learns the synthetic language of
           `scene_document`: scene descriptions in words, hints, the counting question and its
           answer, next-token loss on every token: its language prior (counts read from text,
           hints mostly true);
2. vision  the vision tower alone, on its own objective: for each 16-pixel cell (a decoder image
           token), the shape and colour of the object covering it and how many object centres lie in
           it, and the image's count from the pooled features (throw-away linear heads);
3. align   the projector alone (PaliGemma's linear projector, Qwen2-VL's patch merger), language
           model and tower frozen, on counting (some prompts with a hint) and captioning;
4. tune    everything jointly (as PaliGemma's recipe does), on counting, captioning and a share of
           the text language (replay), the vision objective kept at a small weight.

Each stage's data comes from its own part of the train split's stream (stage s, step b: indices
s * 10^8 + B * b onwards), so no image repeats within a run and no test image is ever seen. A run is
deterministic for a seed on one thread and resumable: every `checkpoint_minutes` (and at every
stage's end) the whole state (weights in float32, optimizer, scheduler, RNG, stage and step, the
log) is written to `checkpoint/current` as safetensors shards under 20 MB and a `state.json`
written last, atomically (written beside, then renamed over the previous one). Run the same command
again and it continues from there with results identical to an uninterrupted run. A line per
`log_every` steps goes to `checkpoint/train.log`. At the end the organism is saved in 16-bit to
`out` with its `training_log.json`, and measured on the test split (`report`).

`continue_from` (a finished organism's folder) runs the tune stage once more from that organism's
weights: a warm restart of the tune's schedule on a fresh part of the stream (stage index 4), for an
organism whose accuracy was still rising when its tune ended. Its log keeps the earlier run's log
(`continued_from_log`), so the organism's whole history stays beside its weights.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlmlib.data import CAPTION_PROMPT, COLOURS, SHAPES
from vlmlib.data.scenes import (
    SCENE_MAX_OBJECTS,
    SCENE_SIZE,
    cell_targets,
    hint_variants,
    make_scene_sample,
    scene_document,
    scenes_samples,
    scenes_vocabulary,
)
from vlmlib.families import family_named

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

STAGES = ("text", "vision", "align", "tune")
SELECT_SEED, REPORT_SEED = 1, 0  # test-split seeds: evaluations during training, the final report
SHARD_BYTES = 18_000_000  # checkpoint files stay under 20 MB
GRID = SCENE_SIZE // 16  # 8x8 cells of 16 pixels: one decoder image token each


def deep_shape(family: str, size: str = "full", tower_layers: int = 16) -> TinyShape:
    """The organisms' sizes. "full": the paper's decoder depths, `tower_layers`-layer towers, 64 image
    tokens. "test": the same token counts, two layers and width 32 (for unit tests; seconds).
    16 tower layers: Appendix E's tower source groups (2-4, 7-9, 10-12) all lie before the tower's last
    three layers (13-15), their target; the first organisms had 12 (`--tower-layers 12` rebuilds them)."""
    patch = 16 if family == "paligemma" else 8
    if size == "test":
        return TinyShape(SCENE_SIZE, patch, 32, 64, 2, 2, 2, 16)
    if family == "paligemma":  # 7.7 M parameters; width costs little next to depth and tokens
        return TinyShape(SCENE_SIZE, patch, 128, 512, 18, tower_layers, 4, 32)
    # Qwen2-VL: its tower sees 256 patches (4x the decoder's tokens) and its decoder has 28 layers:
    # narrower decoder (96) and tower (64), or it would train at half PaliGemma's rate
    return TinyShape(SCENE_SIZE, patch, 96, 384, 28, tower_layers, 4, 24, 64, 256, 4)


@dataclass
class RecipeConfig:
    """One deep organism's training run. Steps are optimizer steps of `batch_size` samples."""

    family: str = "paligemma"  # paligemma | qwen2vl
    seed: int = 0  # weights, data stream and task mix all follow from it
    size: str = "full"  # full | test (a two-layer model with the same token counts)
    tower_layers: int = 16  # vision tower depth of a "full" organism (the first ones: 12)
    out: str = ""  # folder of the finished organism (16-bit save_pretrained); empty: not saved
    checkpoint: str = ""  # folder of the resumable state; empty: no checkpoints
    batch_size: int = 32
    text_steps: int = 3000
    vision_steps: int = 3600  # the tower's pooled features bound the count (book/model-card.md)
    align_steps: int = 500
    tune_steps: int = 3500
    text_lr: float = 1e-3  # peak learning rates (AdamW, linear warmup, cosine decay to 10%)
    vision_lr: float = 1e-3
    align_lr: float = 1e-3
    tune_lr: float = 5e-4
    warmup: int = 100  # warmup steps of each stage
    weight_decay: float = 0.01
    hint_rate: float = 0.3  # share of counting prompts with a hint (align, tune)
    hint_truth: float = 0.85  # share of hints that are true (text documents too)
    caption_fraction: float = 0.2  # share of captioning batches (align, tune)
    text_replay: float = 0.1  # share of text-only batches in the tune stage
    cell_weight: float = 0.1  # weight of the vision objective in the tune stage
    eval_every: int = 500  # tune steps between held-out evaluations (0: only at stage ends)
    eval_samples: int = 270  # held-out images per evaluation (test split, seed 1)
    log_every: int = 25
    checkpoint_minutes: float = 10.0
    max_minutes: float = 0.0  # checkpoint and stop after this long (0: no limit); run again to go on
    threads: int = 1
    continue_from: str = ""  # a finished organism: run only the tune stage again, from its weights

    def stage_steps(self) -> dict[str, int]:
        return {s: getattr(self, f"{s}_steps") for s in STAGES}


# ---------------------------------------------------------------- model and heads


def build(config: RecipeConfig):
    builder = {"paligemma": tiny_paligemma, "qwen2vl": tiny_qwen2vl}[config.family]
    model, processor = builder(
        deep_shape(config.family, config.size, config.tower_layers),
        seed=config.seed,
        vocabulary=scenes_vocabulary(),
    )
    processor.tokenizer.padding_side = "right"
    model.set_attn_implementation("sdpa")
    return model, processor


class VisionHeads(torch.nn.Module):
    """The vision tower's own objective, read linearly from its output per cell: the shape (or
    nothing) and colour of the object covering the cell, how many object centres lie in it (0, 1, 2+),
    and, from the mean over cells, the image's count. Training-time only."""

    def __init__(self, width: int):
        super().__init__()
        self.shape = torch.nn.Linear(width, len(SHAPES) + 1)
        self.colour = torch.nn.Linear(width, len(COLOURS))
        self.centres = torch.nn.Linear(width, 3)
        self.count = torch.nn.Linear(width, SCENE_MAX_OBJECTS)

    def loss(self, cells: torch.Tensor, samples) -> torch.Tensor:
        shape_t = torch.zeros(len(samples), GRID * GRID, dtype=torch.long)
        colour_t = torch.full_like(shape_t, -100)
        centre_t = torch.zeros_like(shape_t)
        for row, s in enumerate(samples):
            t = cell_targets(s.scene, GRID)
            for c, k in enumerate(t["object"].tolist()):
                if k:
                    o = s.scene.objects[k - 1]
                    shape_t[row, c] = SHAPES.index(o.shape) + 1
                    colour_t[row, c] = list(COLOURS).index(o.colour)
            centre_t[row] = torch.from_numpy(np.minimum(t["centres"], 2))
        f = cells.float()
        ce = torch.nn.functional.cross_entropy
        count_t = torch.tensor([int(s.answer) - 1 for s in samples])
        return (
            ce(self.shape(f).flatten(0, 1), shape_t.flatten())
            + ce(self.colour(f).flatten(0, 1), colour_t.flatten())
            + ce(self.centres(f).flatten(0, 1), centre_t.flatten())
            + ce(self.count(f.mean(dim=1)), count_t)
        )


def tower_cells(model, family: str, output) -> torch.Tensor:
    """The tower's output per 16-pixel cell, (images, 64, width): PaliGemma's tokens as they are,
    Qwen2-VL's patches averaged over each 2x2 merge window (the processor packs a window's 4 patches
    together, windows in row-major order)."""
    states = output.last_hidden_state
    if family == "paligemma":
        return states
    return states.view(-1, GRID * GRID, 4, states.shape[-1]).mean(dim=2)


def run_tower(model, family: str, pixels: dict):
    tower = vision_tower(model, family)
    if family == "paligemma":
        return tower(pixels["pixel_values"])
    return tower(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"])


def vision_width(model, family: str) -> int:
    vc = model.config.vision_config
    return vc.hidden_size if family == "paligemma" else vc.embed_dim


# ---------------------------------------------------------------- data


def stream_index(config: RecipeConfig, stage: str) -> int:
    """Which part of the train stream (and of the task mix) a stage draws from: a continued tune
    (`continue_from`) takes part 4, so it sees no image or document the first tune saw."""
    return len(STAGES) if config.continue_from and stage == "tune" else STAGES.index(stage)


def stream_start(config: RecipeConfig, stage: str, step: int) -> int:
    return stream_index(config, stage) * 100_000_000 + step * config.batch_size


def task_of(config: RecipeConfig, stage: str, step: int) -> str:
    """The task of a step's batch (one task per batch): text | vision | count | caption."""
    if stage in ("text", "vision"):
        return stage
    r = np.random.default_rng([config.seed, stream_index(config, stage), step]).random()
    replay = config.text_replay if stage == "tune" else 0.0
    if r < replay:
        return "text"
    return "caption" if r < replay + config.caption_fraction else "count"


def text_batch(config: RecipeConfig, family, processor, start: int, n: int, split: str = "train"):
    """Text documents start..start+n with next-token labels on every token but padding."""
    tok = processor.tokenizer
    texts = []
    for i in range(start, start + n):
        context, question, answer = scene_document(i, config.seed, split, config.hint_truth)
        texts.append(family.text_prompt(processor, f"{context} {question}".strip()) + answer + tok.eos_token)
    batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def image_samples(config: RecipeConfig, start: int, n: int, hints: bool):
    rate = config.hint_rate if hints else 0.0
    return [
        make_scene_sample(i, config.seed, "train", hint_rate=rate, hint_truth=config.hint_truth)
        for i in range(start, start + n)
    ]


def encode(family, processor, samples, task: str, with_answers: bool = True):
    if task == "caption":
        questions, answers = [CAPTION_PROMPT] * len(samples), [s.caption for s in samples]
    else:
        questions, answers = [s.question for s in samples], [s.answer for s in samples]
    return family.encode(processor, [s.image for s in samples], questions, answers if with_answers else None)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def answer_scores(model, processor, family, samples, batch_size: int = 45):
    """Per sample: the greedy answer token and the loss (nats) of the true answer, prompts as given."""
    model.eval()
    tok = processor.tokenizer
    predicted, losses = [], []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        batch = encode(family, processor, chunk, "count", with_answers=False)
        batch.pop("labels", None)
        logits = model(**batch, use_cache=False).logits
        last = batch["attention_mask"].sum(dim=1) - 1
        logp = torch.log_softmax(logits[torch.arange(len(chunk)), last].float(), dim=-1)
        truth = torch.tensor(tok.convert_tokens_to_ids([s.answer for s in chunk]))
        losses += (-logp[torch.arange(len(chunk)), truth]).tolist()
        predicted += tok.convert_ids_to_tokens(logp.argmax(-1).tolist())
    return predicted, losses


def counting_report(model, processor, family, samples) -> dict:
    """Accuracy overall and by count, the clean answer loss's distribution, and under hints: accuracy
    with an agreeing hint, and with a conflicting one the share of answers that follow the hint."""
    predicted, losses = answer_scores(model, processor, family, samples)
    by_count = {str(n): [] for n in range(1, SCENE_MAX_OBJECTS + 1)}
    for s, p in zip(samples, predicted):
        by_count[s.answer].append(int(p == s.answer))
    variants = [hint_variants(s) for s in samples]
    agree, _ = answer_scores(model, processor, family, [v["agree"] for v in variants])
    conflict_samples = [v["conflict"] for v in variants]
    conflict, _ = answer_scores(model, processor, family, conflict_samples)
    follows = [int(p == str(s.hint_count)) for s, p in zip(conflict_samples, conflict)]
    q = np.quantile(losses, [0.1, 0.25, 0.5, 0.75, 0.9]).round(4).tolist()
    return {
        "n": len(samples),
        "accuracy": float(np.mean([p == s.answer for s, p in zip(samples, predicted)])),
        "per_count": {n: (float(np.mean(h)) if h else float("nan")) for n, h in by_count.items()},
        "answer_loss": {"mean": round(float(np.mean(losses)), 4), "quantiles_10_25_50_75_90": q},
        "agree_accuracy": float(np.mean([p == s.answer for s, p in zip(samples, agree)])),
        "conflict_accuracy": float(np.mean([p == s.answer for s, p in zip(samples, conflict)])),
        "conflict_follows_hint": float(np.mean(follows)),
        "conflict_follows_hint_se": float(np.std(follows) / math.sqrt(len(follows))),
    }


@torch.no_grad()
def text_prior(model, processor, family, config: RecipeConfig, n: int = 300) -> dict:
    """The language model on held-out text documents (test split, no image): the answer's accuracy
    when a description gives the count, and how often it repeats a hint when only a hint is there."""
    model.eval()
    tok = processor.tokenizer
    kinds = {"description": [], "hint_only_follows": []}
    docs = [scene_document(i, config.seed + 1000, "test", config.hint_truth) for i in range(n)]
    docs = [d for d in docs if d[1]]
    for i in range(0, len(docs), 50):
        chunk = docs[i : i + 50]
        prompts = [family.text_prompt(processor, f"{c} {q}") for c, q, _ in chunk]
        batch = tok(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
        logits = model(**batch, use_cache=False).logits
        last = batch["attention_mask"].sum(dim=1) - 1
        top = tok.convert_ids_to_tokens(logits[torch.arange(len(chunk)), last].argmax(-1).tolist())
        for (context, _, answer), t in zip(chunk, top):
            if context.startswith("There "):  # hint only: does it repeat the hint's count?
                kinds["hint_only_follows"].append(int(t == context.split()[2]))
            elif "There " not in context:
                kinds["description"].append(int(t == answer))
    return {f"{k}_accuracy" if k == "description" else k: float(np.mean(v)) for k, v in kinds.items() if v}


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], state: dict):
    """Write shards under SHARD_BYTES and state.json (last) into folder/.incoming, then swap it in
    for folder/current: a reader finds either the previous checkpoint or this one, whole."""
    incoming, current, previous = folder / ".incoming", folder / "current", folder / ".previous"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True)
    shards, shard, size = [], {}, 0
    for name, t in tensors.items():
        t = t.detach().contiguous().clone()
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > SHARD_BYTES:
            shards.append(shard)
            shard, size = {}, 0
        shard[name], size = t, size + nbytes
    shards.append(shard)
    names = []
    for i, part in enumerate(shards):
        names.append(f"shard-{i:03d}.safetensors")
        save_file(part, incoming / names[-1])
    (incoming / "state.json").write_text(json.dumps({**state, "shards": names}, indent=1))
    shutil.rmtree(previous, ignore_errors=True)
    if current.exists():
        current.rename(previous)
    incoming.rename(current)
    shutil.rmtree(previous, ignore_errors=True)


def load_checkpoint(folder: Path):
    """(tensors, state) of the newest whole checkpoint in `folder`, or None."""
    for name in ("current", ".previous"):
        path = folder / name
        if (path / "state.json").is_file():
            state = json.loads((path / "state.json").read_text())
            tensors = {}
            for shard in state["shards"]:
                tensors.update(load_file(path / shard))
            return tensors, state
    return None


def optimizer_tensors(opt) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items()}
    return tensors, {
        "param_groups": sd["param_groups"],
        "keys": {str(i): list(s) for i, s in sd["state"].items()},
    }


def optimizer_state(tensors: dict, meta: dict) -> dict:
    state = {int(i): {k: tensors[f"opt.{i}.{k}"] for k in keys} for i, keys in meta["keys"].items()}
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------- training


def stage_params(model, heads, family: str, stage: str) -> list:
    if stage == "text":
        decoder = model.model.language_model
        own = {id(p) for p in decoder.parameters()}
        return list(decoder.parameters()) + [p for p in model.lm_head.parameters() if id(p) not in own]
    if stage == "vision":
        return vision_params(model, family) + list(heads.parameters())
    if stage == "align":
        return list(projector(model, family).parameters())
    return list(model.parameters()) + list(heads.parameters())


def train(config: RecipeConfig, verbose: bool = True):
    """Run (or continue) every stage; returns (model, processor, log)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, verbose)
    finally:
        torch.set_num_threads(threads)


def _train(config: RecipeConfig, verbose: bool):
    t0 = time.time()
    family = family_named(config.family)
    torch.manual_seed(config.seed)
    model, processor = build(config)
    torch.manual_seed(config.seed + 1)
    heads = VisionHeads(vision_width(model, config.family))
    folder = Path(config.checkpoint) if config.checkpoint else None
    log_file = folder / "train.log" if folder else None
    steps = config.stage_steps()
    log: dict = {"config": asdict(config), "curve": [], "evals": [], "stages": {}}
    stage0, step0, resumed = STAGES[0], 0, None
    loaded = load_checkpoint(folder) if folder else None
    if loaded:
        tensors, resumed = loaded
        if resumed["config"] != {k: v for k, v in asdict(config).items() if k not in _FREE}:
            raise ValueError(
                f"{folder} holds a run of another configuration: {resumed['config']}; "
                "use another --checkpoint folder or the same options"
            )
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        heads.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("heads.")})
        torch.set_rng_state(tensors["rng.torch"])
        log, stage0, step0 = resumed["log"], resumed["stage"], resumed["step"]
    elif config.continue_from:
        log["continued_from_log"] = load_organism_weights(model, config)
        for key in ("text_prior_before_tune",):
            if key in log["continued_from_log"]:
                log[key] = log["continued_from_log"][key]
        stage0 = "tune"

    def say(msg: str):
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')} +{time.time() - t0:7.1f}s] {msg}"
        if verbose:
            print(line, flush=True)
        if log_file:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "a") as f:
                f.write(line + "\n")

    if resumed:
        say(f"resumed from {folder / 'current'} at stage {stage0} step {step0}")
    elif config.continue_from:
        say(f"continue {Path(config.continue_from).name}: tune again for {steps['tune']} steps")
        evaluate(model, processor, family, config, log, "start", 0, say)
    else:
        n_params = sum(p.numel() for p in model.parameters())
        say(f"start {config.family} seed {config.seed}: {n_params / 1e6:.2f} M parameters, steps {steps}")

    def checkpoint(stage: str, step: int, opt=None, sched=None):
        if not folder:
            return
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"heads.{k}": v for k, v in heads.state_dict().items()})
        tensors["rng.torch"] = torch.get_rng_state()
        state = {
            "config": {k: v for k, v in asdict(config).items() if k not in _FREE},
            "stage": stage,
            "step": step,
            "log": log,
        }
        if opt is not None:
            opt_tensors, state["optimizer"] = optimizer_tensors(opt)
            tensors.update(opt_tensors)
            state["scheduler"] = sched.state_dict()
        save_checkpoint(folder, tensors, state)
        say(f"checkpoint: stage {stage} step {step} -> {folder / 'current'}")

    captured = {}
    hook = vision_tower(model, config.family).register_forward_hook(
        lambda m, a, o: captured.__setitem__("out", o)
    )
    last_save, run_start = time.time(), time.time()
    try:
        for stage in STAGES[STAGES.index(stage0) :] if stage0 in STAGES else ():
            params = stage_params(model, heads, config.family, stage)
            set_trainable(model, params)
            lr = getattr(config, f"{stage}_lr")
            hp = SimpleNamespace(
                lr=lr, warmup=min(config.warmup, max(1, steps[stage] // 4)), weight_decay=config.weight_decay
            )
            opt, sched = make_optimizer(params, hp, steps[stage])
            start = step0 if stage == stage0 else 0
            if resumed and stage == stage0 and "optimizer" in resumed:
                opt.load_state_dict(optimizer_state(tensors, resumed["optimizer"]))
                sched.load_state_dict(resumed["scheduler"])
            window_t, window_n, window_loss = time.time(), 0, []
            for step in range(start, steps[stage]):
                task = task_of(config, stage, step)
                at = stream_start(config, stage, step)
                model.train()
                if task == "text":
                    batch = text_batch(config, family, processor, at, config.batch_size)
                    loss = model(**batch, use_cache=False).loss
                elif task == "vision":
                    samples = image_samples(config, at, config.batch_size, hints=False)
                    pixels = processor.image_processor([s.image for s in samples], return_tensors="pt")
                    cells = tower_cells(model, config.family, run_tower(model, config.family, pixels))
                    loss = heads.loss(cells, samples)
                else:
                    samples = image_samples(config, at, config.batch_size, hints=task == "count")
                    loss = model(**encode(family, processor, samples, task), use_cache=False).loss
                    if stage == "tune" and config.cell_weight:
                        cells = tower_cells(model, config.family, captured["out"])
                        loss = loss + config.cell_weight * heads.loss(cells, samples)
                captured.clear()
                step_optimizer(loss, opt, sched, params)
                window_n += config.batch_size
                window_loss.append(loss.item())
                done = step + 1
                if done % config.log_every == 0 or done == steps[stage]:
                    rate = window_n / (time.time() - window_t)
                    row = {
                        "stage": stage,
                        "step": done,
                        "task": task,
                        "loss": round(loss.item(), 5),
                        "mean_loss": round(float(np.mean(window_loss)), 5),
                        "samples_per_s": round(rate, 2),
                    }
                    log["curve"].append(row)
                    say(
                        f"{stage} {done}/{steps[stage]} {task} loss {loss.item():.4f} "
                        f"(mean {row['mean_loss']:.4f}) {rate:.1f} samples/s lr {sched.get_last_lr()[0]:.2e}"
                    )
                    window_t, window_n, window_loss = time.time(), 0, []
                if (
                    stage == "tune"
                    and config.eval_every
                    and done % config.eval_every == 0
                    and done < steps[stage]
                ):
                    evaluate(model, processor, family, config, log, stage, done, say)
                if (
                    done < steps[stage]
                    and folder
                    and time.time() - last_save > 60 * config.checkpoint_minutes
                ):
                    checkpoint(stage, done, opt, sched)
                    last_save = time.time()
                if (
                    config.max_minutes
                    and time.time() - run_start > 60 * config.max_minutes
                    and done < steps[stage]
                ):
                    checkpoint(stage, done, opt, sched)
                    say(f"stopped after {config.max_minutes} min; run the same command again to continue")
                    return model, processor, log
            # end of the stage
            log["stages"][stage] = {"done_at_s": round(time.time() - t0, 1)}
            if stage == "text" and steps["text"]:
                log["text_prior_before_tune"] = text_prior(model, processor, family, config)
                say(f"text prior: {log['text_prior_before_tune']}")
            if stage in ("align", "tune"):
                evaluate(model, processor, family, config, log, stage, steps[stage], say)
            if stage == "tune":
                log["text_prior_after_tune"] = text_prior(model, processor, family, config)
                say(f"text prior after the tune: {log['text_prior_after_tune']}")
            nxt = STAGES.index(stage) + 1
            checkpoint(STAGES[nxt] if nxt < len(STAGES) else "done", 0)
            last_save = time.time()
    finally:
        hook.remove()
    model.eval()
    if config.out:
        save(model, processor, config.out, log)
        say(f"organism saved to {config.out}")
    return model, processor, log


def load_organism_weights(model, config: RecipeConfig) -> dict:
    """Load a finished organism's weights into `model` (built by the same recipe); return its log."""
    folder = Path(config.continue_from)
    log_path = folder / "training_log.json"
    if not (folder / "config.json").is_file() or not log_path.is_file():
        raise ValueError(
            f"--continue-from {folder}: not a finished organism (no config.json and training_log.json); "
            "give a folder written by this recipe, such as vlmlib/organisms/weights/paligemma-scenes"
        )
    previous = json.loads(log_path.read_text())
    previous_config = {"tower_layers": 12, **previous["config"]}  # logs before tower_layers: 12
    for key in ("family", "seed", "size", "tower_layers"):
        if previous_config.get(key) != getattr(config, key):
            raise ValueError(
                f"--continue-from {folder} is a {key} {previous_config.get(key)!r} organism, "
                f"this run's {key} is {getattr(config, key)!r}: give the same --{key.replace('_', '-')}"
            )
    saved = type(model).from_pretrained(folder, dtype=torch.float32)
    model.load_state_dict(saved.state_dict())
    return previous


# config fields that may change between a run and its continuation (they change no result)
_FREE = {"out", "checkpoint", "log_every", "checkpoint_minutes", "max_minutes", "threads"}


def evaluate(model, processor, family, config, log, stage, step, say):
    if not config.eval_samples:
        return
    t = time.time()
    result = counting_report(
        model, processor, family, scenes_samples(config.eval_samples, SELECT_SEED, "test")
    )
    result.update(stage=stage, step=step, seconds=round(time.time() - t, 1))
    log["evals"].append(result)
    say(
        f"  held-out ({stage} {step}): counting {result['accuracy']:.3f} "
        + " ".join(f"{n}:{a:.2f}" for n, a in result["per_count"].items())
        + f" | answer loss {result['answer_loss']['mean']:.3f} | agree {result['agree_accuracy']:.3f}"
        + f" conflict {result['conflict_accuracy']:.3f} follows hint {result['conflict_follows_hint']:.3f}"
        + f" ({result['seconds']} s)"
    )


def final_report(out: str, n: int = 630) -> dict:
    """Measure the saved organism on the test split (seed 0, the book's data) and add it to its log."""
    from vlmlib.models import load_model

    lm = load_model(str(out), device="cpu", dtype="float32", attn_implementation="eager")
    log = json.loads((Path(out) / "training_log.json").read_text())
    known = {k: v for k, v in log["config"].items() if k in RecipeConfig.__dataclass_fields__}
    config = RecipeConfig(**{"tower_layers": 12, **known})  # logs before tower_layers: 12
    report = counting_report(lm.model, lm.processor, lm.family, scenes_samples(n, REPORT_SEED, "test"))
    report["text_prior"] = text_prior(lm.model, lm.processor, lm.family, config)
    report["parameters"] = sum(p.numel() for p in lm.model.parameters())
    report["split"], report["seed"] = "test", REPORT_SEED
    log["report"] = report
    (Path(out) / "training_log.json").write_text(json.dumps(log, indent=1))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, f in RecipeConfig.__dataclass_fields__.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(f.default), default=f.default)
    parser.add_argument("--report-only", action="store_true", help="only measure the saved organism")
    args = vars(parser.parse_args(argv))
    report_only = args.pop("report_only")
    config = RecipeConfig(**args)
    if not report_only:
        _, _, log = train(config)
        if "text_prior_after_tune" not in log:  # stopped early: nothing to report yet
            return
    if config.out:
        torch.set_num_threads(config.threads)
        report = final_report(config.out)
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
