"""Activation patching: one routine for every site, position set and family.

A clean run records the activations of the source sites; a second run writes them over the target
sites, pairing source and target layers in order (sources 2,3,4 onto targets 15,16,17: 2->15, 3->16,
4->17), only at the chosen positions; everything else flows on as the model computes it.

    patches = [Patch("attn", sources=(2, 3, 4), targets=(5, 6, 7), positions="text", label="early->mid"),
               Patch("vision", sources=(2, 3, 4), targets=(24, 25, 26), label="2-4")]
    result = patch_experiment(lm, samples, patches, batch_size=8)
    result.rows()      # per patch: clean / patched target logit, delta, CE loss, top-1 accuracy, each +- s.e.

Sites (kinds of `vlmlib.families`):
    attn    what attention adds to the residual in decoder layer l (its output, after any post-norm)
    resid   the output of decoder layer l (H^(l+1) in the paper's notation)
    vision  the output of vision-tower layer l; the tower has only image patches, so its position set
            is always "all" (Qwen2-VL's packed (patches, width) layout included)

Positions (decoder sites): "vision" (image tokens), "text" (real non-image tokens, the final one
included), "all" (every real token). Padding is never written.

Several patches run in one forward pass: the batch is repeated once per patch along the batch
dimension (Qwen2-VL's packed patches along the patch dimension), and block k receives patch k.
Every patch is validated before any forward pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .groups import GroupError, check_pair, span
from .trace import Trace, site

PATCH_KINDS = ("attn", "resid", "vision")
POSITION_SETS = ("vision", "text", "all")
TARGET_MODES = ("auto", "answer", "top1")


class PatchConfigError(GroupError):
    """A patch that cannot run (unknown site, bad positions, layer groups that do not pair)."""


@dataclass(frozen=True)
class Patch:
    """One patching configuration."""

    kind: str  # site kind: "attn", "resid" or "vision"
    sources: tuple[int, ...]  # source layers (0-based), read in the clean run
    targets: tuple[int, ...]  # target layers (0-based), overwritten in the patched run; paired in order
    positions: str = "all"  # decoder positions written: "vision", "text" or "all"; vision tower: "all"
    label: str = ""  # e.g. "early->mid" or "2-4"; shown in tables, joins with the paper's rows

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(target site, source site) for each paired layer."""
        return [(site(self.kind, t), site(self.kind, s)) for s, t in zip(self.sources, self.targets)]

    @property
    def name(self) -> str:
        label = f"{self.label}: " if self.label else ""
        return f"{label}{self.kind} {span(self.sources)} -> {span(self.targets)} @ {self.positions}"


def validate(lm, patches: Iterable[Patch]) -> list[Patch]:
    """The patches with normalised fields, or a PatchConfigError; runs no forward pass."""
    patches = list(patches)
    if not patches:
        raise PatchConfigError("no patches given")
    out = []
    for i, p in enumerate(patches):
        if not isinstance(p, Patch):
            raise PatchConfigError(f"patch {i} is a {type(p).__name__}, not a Patch")
        what = f"patch {i} ({p.label or p.kind})"
        if p.kind not in PATCH_KINDS:
            raise PatchConfigError(f"{what}: cannot patch site kind {p.kind!r}; patchable kinds: {PATCH_KINDS}")
        if p.positions not in POSITION_SETS:
            raise PatchConfigError(f"{what}: unknown position set {p.positions!r}; use one of {POSITION_SETS}")
        positions = p.positions
        if p.kind == "vision":
            if positions == "text":
                raise PatchConfigError(f"{what}: the vision tower has no text positions; use positions='all'")
            positions = "all"  # the tower holds only image patches
            depth, where = lm.num_vision_layers, "vision tower"
        else:
            depth, where = lm.num_layers, "decoder"
        try:
            sources, targets = check_pair(p.sources, p.targets, depth, what, where)
        except GroupError as e:
            raise PatchConfigError(str(e)) from None
        out.append(Patch(p.kind, sources, targets, positions, p.label))
    return out


# ---------------------------------------------------------------- forward passes


def repeat_inputs(inputs, n: int) -> dict:
    """The batch n times along dim 0: rows (and Qwen2-VL's packed pixel patches) in blocks."""
    return {k: torch.cat([v] * n, dim=0) if isinstance(v, torch.Tensor) and n > 1 else v for k, v in inputs.items()}


def position_mask(lm, inputs, positions: str) -> torch.Tensor:
    """(batch, seq) bool: the decoder positions of a position set."""
    if positions == "vision":
        return lm.vision_mask(inputs)
    if positions == "text":
        return lm.text_mask(inputs)
    if positions == "all":
        return inputs["attention_mask"].bool()
    raise PatchConfigError(f"unknown position set {positions!r}; use one of {POSITION_SETS}")


def final_logits(lm, inputs) -> torch.Tensor:
    """(batch, vocab) float32 logits at each row's final real position (only those are computed)."""
    last = lm.last_index(inputs)
    keep = torch.unique(last)  # the LM head runs on these positions only
    out = lm.model(**inputs, use_cache=False, logits_to_keep=keep)
    column = torch.searchsorted(keep, last)
    return out.logits[torch.arange(len(last), device=last.device), column].float()


@dataclass
class CleanRun:
    activations: dict[str, torch.Tensor]  # source sites, as recorded
    logits: torch.Tensor  # (batch, vocab) at the final position
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # position set -> (batch, seq) bool


@torch.no_grad()
def run_clean(lm, inputs, sites: Iterable[str] = ()) -> CleanRun:
    with Trace(lm, sites) as tr:
        logits = final_logits(lm, inputs)
    masks = {p: position_mask(lm, inputs, p) for p in POSITION_SETS}
    return CleanRun(dict(tr.outputs), logits, masks)


@torch.no_grad()
def run_patched(lm, inputs, patches: Sequence[Patch], clean: CleanRun, record: Iterable[str] = ()):
    """One forward pass of len(patches) copies of the batch, copy k patched by patches[k].

    Returns (logits (n_patches, batch, vocab) at the final position, {site: recorded value}) where a
    recorded decoder site is (n_patches, batch, seq, width) and a vision site is its blocks stacked.
    `patches` must be validated and `clean` must hold their source sites.
    """
    n = len(patches)
    plan: dict[str, list[tuple[int, str, torch.Tensor | None]]] = {}
    for k, p in enumerate(patches):
        mask = None if p.kind == "vision" else clean.masks[p.positions]
        for target, source in p.pairs:
            if source not in clean.activations:
                raise KeyError(f"the clean run did not record {source!r}, a source of {p.name}")
            plan.setdefault(target, []).append((k, source, mask))

    def edit(name, value):
        if name not in plan:
            return value
        if value.shape[0] % n:
            raise RuntimeError(f"{name}: leading size {value.shape[0]} is not {n} blocks")
        blocks = value.reshape(n, value.shape[0] // n, *value.shape[1:]).clone()
        for k, source, mask in plan[name]:
            src = clean.activations[source].to(blocks.dtype)
            if mask is None:
                blocks[k] = src
            else:
                blocks[k] = torch.where(mask.unsqueeze(-1), src, blocks[k])
        return blocks.reshape(value.shape)

    record = list(record)
    big = repeat_inputs(inputs, n)
    with Trace(lm, [*plan, *record], edit=edit, clone=False) as tr:
        logits = final_logits(lm, big)
    recorded = {s: tr[s].reshape(n, tr[s].shape[0] // n, *tr[s].shape[1:]) for s in record}
    return logits.reshape(n, -1, logits.shape[-1]), recorded


# ---------------------------------------------------------------- measures


def token_measures(logits: torch.Tensor, ids: torch.Tensor):
    """(target logit, cross-entropy loss, top-1 correct) per row; logits (..., vocab), ids (batch,)."""
    ids = ids.expand(logits.shape[:-1])
    logit = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    loss = torch.logsumexp(logits, dim=-1) - logit
    correct = logits.argmax(dim=-1) == ids
    return logit, loss, correct


def target_ids(lm, samples: Sequence, clean_logits: torch.Tensor, target: str) -> tuple[torch.Tensor, str]:
    """Target token per sample, and which rule chose it ("answer" or "top1")."""
    if target not in TARGET_MODES:
        raise ValueError(f"unknown target {target!r}; use one of {TARGET_MODES}")
    has_answers = all(getattr(s, "answer", None) not in (None, "") for s in samples)
    if target == "answer" and not has_answers:
        raise ValueError("target='answer' but some samples have no answer; use target='top1' or 'auto'")
    if target == "top1" or not has_answers:
        return clean_logits.argmax(dim=-1), "top1"
    ids = [lm.token_id(s.answer) for s in samples]
    return torch.tensor(ids, device=clean_logits.device), "answer"


def mean_se(x) -> tuple[float, float]:
    """Mean and standard error of the mean (sample s.d. / sqrt(n)); s.e. is NaN for one value."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


MEASURES = ("clean", "patched", "delta", "clean_loss", "patched_loss", "delta_loss", "clean_acc", "patched_acc")


@dataclass
class PatchResult:
    """Per-sample measures of every patch; `rows()` summarises them with standard errors."""

    patches: list[Patch]
    target: str  # "answer" or "top1": how the target token was chosen
    clean_logit: np.ndarray  # (n_samples,)
    clean_loss: np.ndarray
    clean_correct: np.ndarray
    patched_logit: np.ndarray  # (n_patches, n_samples)
    patched_loss: np.ndarray
    patched_correct: np.ndarray
    seconds: float = 0.0

    @property
    def n_samples(self) -> int:
        return len(self.clean_logit)

    def per_sample(self, k: int) -> dict[str, np.ndarray]:
        return {
            "clean": self.clean_logit, "patched": self.patched_logit[k],
            "delta": self.patched_logit[k] - self.clean_logit,
            "clean_loss": self.clean_loss, "patched_loss": self.patched_loss[k],
            "delta_loss": self.patched_loss[k] - self.clean_loss,
            "clean_acc": self.clean_correct.astype(float), "patched_acc": self.patched_correct[k].astype(float),
        }

    def rows(self) -> list[dict]:
        """One dict per patch: its fields, and for each measure its mean and `<measure>_se`."""
        out = []
        for k, p in enumerate(self.patches):
            row = {"label": p.label, "kind": p.kind, "positions": p.positions, "sources": list(p.sources),
                   "targets": list(p.targets), "n": self.n_samples, "target": self.target}
            for name, values in self.per_sample(k).items():
                row[name], row[name + "_se"] = mean_se(values)
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return {"target": self.target, "n_samples": self.n_samples, "seconds": self.seconds, "rows": self.rows()}


def patch_experiment(lm, samples: Sequence, patches: Iterable[Patch], batch_size: int = 8, target: str = "auto",
                     max_rows: int = 32) -> PatchResult:
    """Run every patch on every sample: clean run once per batch, patches stacked `max_rows` rows at a time.

    `target`: "answer" (the dataset's answer token), "top1" (the clean run's top-1 token) or "auto"
    (the answer when every sample has one, else top-1). Measures are taken at the final position.
    Stacking pays on a GPU; on a CPU compute grows with the rows, so a modest `max_rows` is as fast.
    """
    patches = validate(lm, patches)  # every error before any forward pass
    if target not in TARGET_MODES:
        raise ValueError(f"unknown target {target!r}; use one of {TARGET_MODES}")
    if batch_size < 1 or max_rows < 1:
        raise ValueError("batch_size and max_rows must be positive")
    samples = list(samples)
    if not samples:
        raise ValueError("no samples")
    sources = list(dict.fromkeys(s for p in patches for _, s in p.pairs))
    start = time.perf_counter()
    clean_parts, patched_parts, used = [], [], set()
    for i in range(0, len(samples), batch_size):
        batch = samples[i:i + batch_size]
        inputs = lm.encode_samples(batch)
        clean = run_clean(lm, inputs, sources)
        ids, rule = target_ids(lm, batch, clean.logits, target)
        used.add(rule)
        clean_parts.append([t.cpu() for t in token_measures(clean.logits, ids)])
        per_pass = max(1, max_rows // len(batch))
        chunks = []
        for j in range(0, len(patches), per_pass):
            logits, _ = run_patched(lm, inputs, patches[j:j + per_pass], clean)
            chunks.append([t.cpu() for t in token_measures(logits, ids)])
        patched_parts.append([torch.cat(c, dim=0) for c in zip(*chunks)])  # (n_patches, batch)
    clean_cat = [torch.cat(c, dim=0).numpy() for c in zip(*clean_parts)]
    patched_cat = [torch.cat(c, dim=1).numpy() for c in zip(*patched_parts)]
    return PatchResult(patches, "answer" if used == {"answer"} else "top1", *clean_cat, *patched_cat,
                       seconds=time.perf_counter() - start)


# ---------------------------------------------------------------- chapter helpers


def parse_direction(direction: str) -> tuple[str, str]:
    """'early->mid' (or 'Early → Mid') -> ('early', 'mid'): sources first, targets second."""
    text = direction.replace("→", "->").replace(" ", "").lower()
    source, sep, target = text.partition("->")
    if not sep or not source or not target:
        raise PatchConfigError(f"direction {direction!r} should read 'source->target', e.g. 'early->mid'")
    return source, target


def attention_patches(groups: dict, directions: Iterable[str], positions: Iterable[str] = ("vision", "text"),
                      kind: str = "attn") -> list[Patch]:
    """Section 2.2's configurations: for each position set and direction 'A->B', groups[A] onto groups[B]."""
    out = []
    for pos in positions:
        for d in directions:
            source, target = parse_direction(d)
            for g in (source, target):
                if g not in groups:
                    raise PatchConfigError(f"direction {d!r} names group {g!r}; known groups: {list(groups)}")
            out.append(Patch(kind, tuple(groups[source]), tuple(groups[target]), pos, f"{source}->{target}"))
    return out


def front_patches(groups: dict, sources: Iterable[str], kind: str, positions: str = "all",
                  target: str = "final") -> list[Patch]:
    """Appendix E's configurations: each source group onto the `target` group (the last layers)."""
    if target not in groups:
        raise PatchConfigError(f"target group {target!r} is not among the groups {list(groups)}")
    out = []
    for name in sources:
        if name not in groups:
            raise PatchConfigError(f"source group {name!r} is not among the groups {list(groups)}")
        out.append(Patch(kind, tuple(groups[name]), tuple(groups[target]), positions, name))
    return out


def _fmt(mean, se=None, digits=2):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:.{digits}f}"
    if se is not None and not (isinstance(se, float) and math.isnan(se)):
        text += f" ± {se:.{digits}f}"
    return text


def markdown_table(rows: list[dict], paper: dict | None = None, digits: int = 2) -> str:
    """Our rows (mean ± s.e.) with the paper's values beside them where a paper row has the same
    (kind, positions, patch label)."""
    head = ["site", "patch", "layers", "clean logit", "patched logit", "Δ logit", "clean loss", "patched loss",
            "clean top-1", "patched top-1"]
    if paper is not None:
        head += ["paper clean", "paper patched", "paper Δ", "paper clean loss", "paper patched loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [modality_name(r), r["label"], f"{span(r['sources'])} → {span(r['targets'])}"]
        cells += [_fmt(r[m], r[m + "_se"], digits) for m in ("clean", "patched", "delta", "clean_loss", "patched_loss",
                                                              "clean_acc", "patched_acc")]
        if paper is not None:
            pr = paper_row(paper, r)
            cells += [_fmt(pr[c], None, digits) if pr else "–"
                      for c in ("clean", "patched", "delta", "clean_loss", "patched_loss")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_markdown(paper: dict) -> str:
    """The paper's table as transcribed."""
    key = "direction" if "direction" in paper["rows"][0] else "layers"
    cols = ["clean", "patched", "delta", "clean_loss", "patched_loss"]
    head = ["Modality", key.capitalize(), *(paper["columns"][c] for c in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in paper["rows"]:
        digits = paper.get("digits", 2)
        lines.append("| " + " | ".join([r["modality"], r[key], *(f"{r[c]:.{digits}f}" for c in cols)]) + " |")
    return "\n".join(lines)


def modality_name(row: dict) -> str:
    """How a row's site and positions read in a table: 'vision tower', 'decoder text', ..."""
    if row["kind"] == "vision":
        return "vision tower"
    where = {"vision": "vision positions", "text": "text positions", "all": "all positions"}[row["positions"]]
    return f"{'attention' if row['kind'] == 'attn' else 'decoder'}, {where}"


def paper_row(paper: dict | None, row: dict) -> dict | None:
    for r in (paper or {}).get("rows", []):
        if (r["kind"], r["positions"], r["patch"]) == (row["kind"], row["positions"], row["label"]):
            return r
    return None


def compare_with_paper(rows: list[dict], paper: dict | None, z: float = 2.0) -> list[dict]:
    """Per row with a paper counterpart: the paper's delta sign, ours, and whether ours is resolved
    (|delta| > z standard errors). Drives the chapter's 'what this run shows'."""
    out = []
    for r in rows:
        pr = paper_row(paper, r)
        if pr is None:
            continue
        se = r["delta_se"] if r["delta_se"] == r["delta_se"] else 0.0  # NaN for one sample
        resolved = abs(r["delta"]) > z * se
        ours = "+" if r["delta"] > 0 else "-" if r["delta"] < 0 else "0"
        theirs = "+" if pr["delta"] > 0 else "-" if pr["delta"] < 0 else "0"
        out.append({"modality": modality_name(r), "patch": r["label"], "paper_delta": pr["delta"],
                    "delta": r["delta"], "delta_se": r["delta_se"], "resolved": bool(resolved),
                    "same_sign": ours == theirs})
    return out


def delta_figure(rows: list[dict], paper: dict | None = None, title: str = ""):
    """Delta logit per patch, grouped by modality: ours with +-1 s.e. bars, the paper's below (own scale)."""
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(modality_name(r) for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    has_paper = paper is not None and any(paper_row(paper, r) for r in rows)
    fig, axes = plt.subplots(2 if has_paper else 1, 1, squeeze=False,
                             figsize=(max(6.0, 0.6 * len(labels) * len(groups) + 2), 5.5 if has_paper else 3))
    width = 0.8 / len(groups)
    x = np.arange(len(labels))
    for ax, whose in zip(axes[:, 0], ("ours", "paper")):
        for g, group in enumerate(groups):
            values, errors = [], []
            for label in labels:
                row = next((r for r in rows if r["label"] == label and modality_name(r) == group), None)
                if whose == "ours":
                    values.append(row["delta"] if row else np.nan)
                    errors.append(row["delta_se"] if row else np.nan)
                else:
                    pr = paper_row(paper, row) if row else None
                    values.append(pr["delta"] if pr else np.nan)
                    errors.append(0.0)
            ax.bar(x + (g - (len(groups) - 1) / 2) * width, values, width, yerr=None if whose == "paper" else errors,
                   capsize=3, label=group)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, labels)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_ylabel("Δ target logit")
        ax.set_title(f"ours (± 1 s.e.){': ' + title if title else ''}" if whose == "ours"
                     else f"paper, {paper.get('model', '').split(' (')[0]} (no spread reported)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
