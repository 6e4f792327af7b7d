"""Attention knockout: where does the answer read the image?

Following Geva et al. (2023, "Dissecting recall of factual associations") and Neo et al. (2024,
"Towards interpreting visual information processing in VLMs"), a knockout forbids chosen queries to
attend to the image tokens in chosen decoder layers; everything else runs as the model computes it.
If blocking layer l costs accuracy, the answer reads the image through attention in layer l.

    kos = layer_sweep(lm.num_layers, queries="text", window=2)   # single layers, windows, onwards
    result = knockout_experiment(lm, samples, kos, batch_size=8)
    result.rows()    # per knockout: accuracy, Δ log p(answer), Δ logit difference, each with paired s.e.

Query sets: "final" (each row's final real position, where the answer is read), "text" (every real
non-image position, the final one included) or "all" (every real position). Keys blocked: the image
tokens (`lm.vision_mask`) by default; any other key positions by name, `Knockout(..., keys="hint")` with
`knockout_experiment(..., keys={"hint": fn})`, fn(lm, inputs, samples) -> (batch, seq) bool (for
example `vlmlib.hints.hint_mask`). A query is never blocked from the keys of its own set (the image
tokens keep reading each other, a hint's tokens too): a knockout hides the keys from the *other*
positions of the query set, and the image knockout is the same with `keys="image"` named or not.

How: a forward pre-hook on the attention module of each affected decoder layer (the family's
`attn_weights` site, so no family branches) edits the `attention_mask` argument before attention
runs: False (bool masks) or the dtype's minimum (additive float masks) at (blocked query, image key).
A mask of None (transformers' SDPA path when nothing needs masking) is first written out as the
causal or full mask the module would have used. Layers without a knockout are never hooked, so a
knockout of no layer runs the unchanged model, bit for bit. The blocked queries always keep a key
(themselves: a final or text position is never an image token), so no softmax row is empty.

Several knockouts run in one pass: the batch is repeated once per knockout along the batch dimension
and block k gets knockout k (as in `vlmlib.interventions.patching`). Nothing before a knockout's first
knocked layer changes, so a pass resumes from the clean run's residual state there (the lean runs of
`vlmlib.interventions.resume`: `resume_plan`, `ResumeAt`): the decoder blocks before the earliest first
layer of its knockouts do not run, and `knockout_experiment` stacks knockouts in order of their first
layer so that most passes start late.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..params import as_names
from ..stats import mean_se, proportion_se
from ..trace import site
from ..util import span
from .patching import condition_targets, pad_tokens, sequence_measures, teacher_forced_inputs
from .resume import (
    CleanRun,
    ResumeAt,
    final_logits,
    logits_at,
    repeat_inputs,
    resume_plan,
    run_clean,
    with_positions,
)

QUERY_SETS = ("final", "text")  # the sweeps of chapter 8
ALL_QUERY_SETS = (*QUERY_SETS, "all")  # "all": every real position (outside the blocked keys)
IMAGE_KEYS = "image"  # the default key set: the image tokens
SCHEMES = ("layer", "window", "onwards")
MASKABLE_IMPLEMENTATIONS = ("sdpa", "eager")  # take an explicit 4-D mask that we can edit


class KnockoutConfigError(ValueError):
    """A knockout that cannot run (unknown query set, layers outside the decoder, ...)."""


@dataclass(frozen=True)
class Knockout:
    """Block attention from `queries` to the `keys` positions (the image tokens unless named) in
    `layers` (0-based decoder layers)."""

    layers: tuple[int, ...]
    queries: str = "text"  # "final", "text" or "all"
    scheme: str = "layer"  # how the sweep made it: "layer", "window" or "onwards" (for tables only)
    label: str = ""
    keys: str = IMAGE_KEYS  # the key positions hidden: "image", or a name given to knockout_experiment

    @property
    def name(self) -> str:
        keys = "" if self.keys == IMAGE_KEYS else f" ({self.keys} hidden)"
        return f"{self.label or span(self.layers)} @ {self.queries}{keys}"


def check_knockouts(num_layers: int, knockouts: Iterable[Knockout]) -> list[Knockout]:
    """The knockouts with sorted, de-duplicated layers, or a KnockoutConfigError; runs nothing."""
    knockouts = list(knockouts)
    if not knockouts:
        raise KnockoutConfigError("no knockouts given")
    out = []
    for i, ko in enumerate(knockouts):
        if not isinstance(ko, Knockout):
            raise KnockoutConfigError(f"knockout {i} is a {type(ko).__name__}, not a Knockout")
        if ko.queries not in ALL_QUERY_SETS:
            raise KnockoutConfigError(
                f"knockout {i}: unknown query set {ko.queries!r}; use one of {ALL_QUERY_SETS}"
            )
        if not isinstance(ko.keys, str) or not ko.keys:
            raise KnockoutConfigError(f"knockout {i}: keys must name a key set, got {ko.keys!r}")
        bad = [
            layer
            for layer in ko.layers
            if not (isinstance(layer, (int, np.integer)) and 0 <= layer < num_layers)
        ]
        if bad:
            raise KnockoutConfigError(
                f"knockout {i} ({ko.name}): layers {bad} are outside the decoder (layers 0..{num_layers - 1})"
            )
        layers = tuple(sorted({int(layer) for layer in ko.layers}))
        out.append(Knockout(layers, ko.queries, ko.scheme, ko.label or span(layers), ko.keys))
    return out


def layer_sweep(
    num_layers: int,
    queries: str = "text",
    window: int | None = None,
    schemes: Sequence[str] = SCHEMES,
    keys: str = IMAGE_KEYS,
) -> list[Knockout]:
    """Knockouts of each single layer, of each window of `window` consecutive layers (sliding by one;
    the window scheme needs `window`), and of each layer onwards (layer l to the last), hiding `keys`."""
    schemes = as_names(schemes, "schemes")
    if window is None and "window" in schemes:
        raise KnockoutConfigError(
            "the window scheme needs a window size: give window=... (layers per window)"
        )
    if window is not None and not 1 <= window <= num_layers:
        raise KnockoutConfigError(
            f"window {window} must be between 1 and the number of layers ({num_layers})"
        )
    unknown = set(schemes) - set(SCHEMES)
    if unknown:
        raise KnockoutConfigError(f"unknown schemes {sorted(unknown)}; use some of {SCHEMES}")
    out = []
    if "layer" in schemes:
        out += [Knockout((l,), queries, "layer", str(l), keys) for l in range(num_layers)]
    if "window" in schemes:
        out += [
            Knockout(tuple(range(l, l + window)), queries, "window", span(range(l, l + window)), keys)
            for l in range(num_layers - window + 1)
        ]
    if "onwards" in schemes:
        out += [
            Knockout(tuple(range(l, num_layers)), queries, "onwards", f"{l}-", keys)
            for l in range(num_layers)
        ]
    return out


# ---------------------------------------------------------------- the mask edit


def query_mask(lm, inputs, queries: str, read_at: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, seq) bool: the positions whose attention a knockout of this query set edits. `read_at`
    (batch, k): where `inputs` hold a teacher-forced answer of k tokens, the positions whose logits predict
    them (the final prompt position and the answer's own but its last): then the "final" set, where the
    answer is read."""
    if queries == "text":
        return lm.text_mask(inputs)
    if queries == "all":
        return inputs["attention_mask"].bool()
    if queries == "final":
        mask = torch.zeros_like(inputs["attention_mask"], dtype=torch.bool)
        rows = torch.arange(mask.shape[0], device=mask.device)
        if read_at is None:
            mask[rows, lm.last_index(inputs)] = True
        else:
            mask[rows.unsqueeze(1).expand_as(read_at), read_at.to(mask.device)] = True
        return mask
    raise KnockoutConfigError(f"unknown query set {queries!r}; use one of {ALL_QUERY_SETS}")


def key_mask(lm, inputs, keys: str, key_masks: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """(batch, seq) bool: the key positions of a key set, "image" or one of `key_masks`."""
    if key_masks and keys in key_masks:
        return key_masks[keys].to(inputs["input_ids"].device).bool()
    if keys == IMAGE_KEYS:
        return lm.vision_mask(inputs)
    raise KnockoutConfigError(
        f"unknown key set {keys!r}: use {IMAGE_KEYS!r} or give its positions "
        f"(knockout_experiment(..., keys={{{keys!r}: fn}}))"
    )


def blocked_pairs(
    lm,
    inputs,
    knockouts: Sequence[Knockout],
    key_masks: Mapping[str, torch.Tensor] | None = None,
    read_at: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """layer -> (len(knockouts) * batch, seq, seq) bool, True where (query, key) is cut: rows of block
    k are cut only at the layers of knockout k. Layers no knockout names are absent. `key_masks`: the
    (batch, seq) positions of key sets other than the image's, by name. `read_at`: see `query_mask`."""
    n, (batch, seq) = len(knockouts), inputs["input_ids"].shape
    pairs = {}
    for queries, keys in {(ko.queries, ko.keys) for ko in knockouts}:
        hidden = key_mask(lm, inputs, keys, key_masks)
        # a key set's own positions keep reading each other: only the other queries lose them
        queried = query_mask(lm, inputs, queries, read_at)
        pairs[queries, keys] = (queried & ~hidden)[:, :, None] & hidden[:, None, :]
    device = inputs["input_ids"].device
    out = {}
    for layer in sorted({layer for ko in knockouts for layer in ko.layers}):
        cut = torch.zeros(n, batch, seq, seq, dtype=torch.bool, device=device)
        for k, ko in enumerate(knockouts):
            if layer in ko.layers:
                cut[k] = pairs[ko.queries, ko.keys]
        out[layer] = cut.reshape(n * batch, seq, seq)
    return out


def _edited_mask(mask, cut: torch.Tensor, module, kwargs, device) -> torch.Tensor:
    """The layer's mask with `cut` (batch, q, k) forbidden, in the mask's own form (bool or additive)."""
    rows, q_len, k_len = cut.shape
    cut = cut.to(device)[:, None]  # (batch, 1, q, k): the same cut for every head
    if mask is None:
        # What attention does without a mask: causal when the module says so (SDPA's is_causal), else full.
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", True) if causal is None else causal
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
        if causal:
            allowed = allowed.tril(diagonal=k_len - q_len)
        return allowed[None, None] & ~cut
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
        raise RuntimeError(
            f"attention knockout needs a 4-D attention mask tensor, got {type(mask).__name__} "
            f"{getattr(mask, 'shape', '')}; load the model with attn_implementation='sdpa' or 'eager'"
        )
    if mask.shape[-2:] != (q_len, k_len) or mask.shape[0] not in (1, rows):
        raise RuntimeError(
            f"attention mask of shape {tuple(mask.shape)} does not match the knockout's "
            f"({rows}, *, {q_len}, {k_len}); knockouts run without a KV cache (use_cache=False)"
        )
    if mask.dtype == torch.bool:  # True = may attend
        return mask & ~cut
    return mask.masked_fill(cut, torch.finfo(mask.dtype).min)  # additive: 0 = may attend


def decoder_attention_implementation(lm) -> str | None:
    config = lm.model.config
    return (
        getattr(getattr(config, "text_config", None), "_attn_implementation", None)
        or config._attn_implementation
    )


def takes_4d_mask(implementation: str | None) -> bool:
    """Whether an attention implementation is handed transformers' 4-D SDPA or eager mask (also one
    registered under another name with those mask builders, like `vlmlib.observation`'s)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

    if implementation in MASKABLE_IMPLEMENTATIONS:
        return True
    return implementation in ALL_MASK_ATTENTION_FUNCTIONS and ALL_MASK_ATTENTION_FUNCTIONS[
        implementation
    ] in (sdpa_mask, eager_mask)


@contextlib.contextmanager
def image_knockout(lm, cuts: Mapping[int, torch.Tensor]):
    """While open, decoder layer l's attention cannot use the (query, key) pairs where cuts[l] is True
    ((batch, seq, seq) bool, batch as in the forward pass). Hooks are removed on exit, also after an error."""
    implementation = decoder_attention_implementation(lm)
    if cuts and not takes_4d_mask(implementation):
        raise KnockoutConfigError(
            f"attention knockout edits the attention mask, which {implementation!r} attention "
            f"does not take; load the model with attn_implementation='sdpa' or 'eager'"
        )
    handles = []

    def hook_for(cut):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[0] != cut.shape[0] or hidden.shape[1] != cut.shape[1]:
                raise RuntimeError(
                    f"knockout built for {tuple(cut.shape[:2])} (rows, tokens) but the forward pass "
                    f"has {tuple(hidden.shape[:2])}: build the cuts from the inputs that run"
                )
            if "attention_mask" not in kwargs:
                raise RuntimeError(
                    f"{type(module).__name__} was called without an attention_mask keyword, so "
                    "the knockout has no mask to edit; this decoder layer is not supported"
                )
            if kwargs.get("past_key_values") is not None and kwargs.get("use_cache"):
                raise RuntimeError(
                    "attention knockout runs without a KV cache: call the model with use_cache=False"
                )
            kwargs = dict(kwargs)
            kwargs["attention_mask"] = _edited_mask(
                kwargs["attention_mask"], cut, module, kwargs, hidden.device
            )
            return args, kwargs

        return hook

    try:
        for layer, cut in cuts.items():
            if not bool(cut.any()):
                continue  # nothing cut here: leave the layer's path untouched
            module = lm.family.site_module(lm.model, "attn_weights", layer)  # the attention module
            handles.append(module.register_forward_pre_hook(hook_for(cut), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _repeat(value, n: int):
    """A module output n times along dim 0 (tensors inside tuples and ModelOutputs too), the layout of
    `repeat_inputs`: whole batches in blocks (Qwen2-VL's packed patches are one batch's rows). Containers
    are always new objects: transformers edits a tower's output object in place after the call."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value] * n, dim=0) if n > 1 else value
    if isinstance(value, (tuple, list)) and not hasattr(value, "keys"):  # a list: Qwen3-VL's DeepStack
        return type(value)(_repeat(v, n) for v in value)
    if hasattr(value, "keys"):  # transformers' ModelOutput (a dict subclass) or a dict
        return type(value)(**{k: _repeat(v, n) for k, v in value.items()})
    return value


@contextlib.contextmanager
def recorded_output(module):
    """Record what `module` returns during the block: `with recorded_output(tower) as seen: ...; seen[0]`."""
    seen = []
    handle = module.register_forward_hook(lambda mod, args, output: seen.append(_repeat(output, 1)))
    try:
        yield seen
    finally:
        handle.remove()


@contextlib.contextmanager
def replayed_output(module, output, n: int):
    """While open, `module` does not compute: it returns `output` repeated n times along the batch.
    The knockouts edit only the decoder, so the vision tower's output of the clean run is theirs too;
    replaying it spares the tower's cost once per knockout (about half of a Qwen2-VL pass on CPU)."""
    repeated = _repeat(output, n)
    # An instance attribute shadows the class's forward; a fresh container per call (edited in place later).
    module.forward = lambda *args, **kwargs: _repeat(repeated, 1)
    try:
        yield
    finally:
        del module.forward


def first_knocked(num_layers: int, knockouts: Iterable[Knockout]) -> int:
    """The earliest layer any of `knockouts` blocks (num_layers if none blocks any): the decoder's
    state before it is the clean run's."""
    return min((min(ko.layers, default=num_layers) for ko in knockouts), default=num_layers)


def knockout_resume_sites(lm, knockouts: Iterable[Knockout]) -> list[str]:
    """The clean residual states (`resid.{first - 1}`) lean passes of `knockouts` may resume from."""
    firsts = {first_knocked(lm.num_layers, [ko]) for ko in knockouts}
    return [site("resid", first - 1) for first in sorted(firsts) if first > 0]


@torch.no_grad()
def knockout_logits(
    lm,
    inputs,
    knockouts: Sequence[Knockout],
    vision_output=None,
    clean: CleanRun | None = None,
    key_masks: Mapping[str, torch.Tensor] | None = None,
    read_at: torch.Tensor | None = None,
) -> torch.Tensor:
    """(len(knockouts), batch, vocab) float32 logits at each row's final position, block k run with
    knockout k (validated). One forward pass of the repeated batch. `vision_output`: what the family's
    vision tower returned for `inputs` in a clean run (see `recorded_output`), replayed instead of
    running the tower again. `clean`: the clean run of `inputs`; where it recorded the residual state
    before the first knocked layer (`knockout_resume_sites`), the pass resumes from it and skips the
    blocks before. `key_masks`: the positions of key sets other than the image's (`blocked_pairs`).
    `read_at` (batch, k): `inputs` hold a teacher-forced answer and the logits are read at these positions,
    (len(knockouts), batch, k, vocab); they are the "final" query set too (`query_mask`)."""
    knockouts = check_knockouts(lm.num_layers, knockouts)
    n = len(knockouts)
    big = repeat_inputs(with_positions(lm, inputs), n)
    cuts = blocked_pairs(lm, inputs, knockouts, key_masks, read_at)
    tower = lm.model.get_submodule(lm.family.vision_tower)
    replay = contextlib.nullcontext() if vision_output is None else replayed_output(tower, vision_output, n)
    skips = (
        [] if clean is None else resume_plan(lm, clean, first_decoder=first_knocked(lm.num_layers, knockouts))
    )
    with image_knockout(lm, cuts), replay, ResumeAt(lm, skips, clean, n):
        if read_at is not None:
            logits = logits_at(lm, big, read_at.repeat(n, 1))
            return logits.reshape(n, -1, *logits.shape[1:])
        logits = final_logits(lm, big)
    return logits.reshape(n, -1, logits.shape[-1])


# ---------------------------------------------------------------- measures


def answer_measures(logits: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per row: log p(target), target logit minus the best other logit, top-1 correct."""
    ids = ids.expand(logits.shape[:-1])
    target = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, ids.unsqueeze(-1), float("-inf"))
    return {
        "logprob": target - torch.logsumexp(logits, dim=-1),
        "logit_diff": target - others.max(dim=-1).values,
        "correct": logits.argmax(dim=-1) == ids,
    }


@dataclass
class KnockoutResult:
    """Per-sample measures of a clean run and of every knockout; `rows()` summarises them."""

    knockouts: list[Knockout]
    target: str  # "answer" or "top1": how the target token was chosen
    clean: dict[str, np.ndarray]  # measure -> (n_samples,)
    knocked: dict[str, np.ndarray]  # measure -> (n_knockouts, n_samples)
    seconds: float = 0.0
    answer_tokens: int = (
        1  # the most tokens a target has (an answer of several is teacher-forced, read whole)
    )

    @property
    def n_samples(self) -> int:
        return len(self.clean["logprob"])

    def rows(self) -> list[dict]:
        """One dict per knockout. Deltas are knocked minus clean per sample; their s.e. is that of the
        per-sample differences (paired), which is what tells a layer's effect from sample noise."""
        clean_acc = self.clean["correct"].astype(float)
        out = []
        for k, ko in enumerate(self.knockouts):
            row = {
                "label": ko.label,
                "scheme": ko.scheme,
                "queries": ko.queries,
                "keys": ko.keys,
                "layers": list(ko.layers),
                "n": self.n_samples,
                "target": self.target,
            }
            acc = self.knocked["correct"][k].astype(float)
            row["clean_acc"], row["clean_acc_se"] = proportion_se(clean_acc)  # binomial s.e. of an accuracy
            row["knocked_acc"], row["knocked_acc_se"] = proportion_se(acc)
            row["delta_acc"], row["delta_acc_se"] = mean_se(acc - clean_acc)
            row["clean_logprob"], row["clean_logprob_se"] = mean_se(self.clean["logprob"])
            row["knocked_logprob"], row["knocked_logprob_se"] = mean_se(self.knocked["logprob"][k])
            row["delta_logprob"], row["delta_logprob_se"] = mean_se(
                self.knocked["logprob"][k] - self.clean["logprob"]
            )
            row["delta_logit_diff"], row["delta_logit_diff_se"] = mean_se(
                self.knocked["logit_diff"][k] - self.clean["logit_diff"]
            )
            out.append(row)
        return out

    def select(self, queries: str, scheme: str, keys: str | None = None) -> list[dict]:
        """The rows of one query set and scheme (and key set, where given)."""
        return [
            r
            for r in self.rows()
            if r["queries"] == queries and r["scheme"] == scheme and keys in (None, r["keys"])
        ]

    def predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """(clean top-1 token per sample (n_samples,), knocked top-1 (n_knockouts, n_samples)): what the
        model answers, to score against other tokens than the target (a hint's count)."""
        return self.clean["top1"], self.knocked["top1"]

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "answer_tokens": self.answer_tokens,
            "n_samples": self.n_samples,
            "seconds": self.seconds,
            "rows": self.rows(),
        }


def knockout_experiment(
    lm,
    samples: Sequence,
    knockouts: Iterable[Knockout],
    batch_size: int = 8,
    target: str = "auto",
    max_rows: int = 64,
    reuse_vision: bool = True,
    lean: bool = True,
    keys: Mapping[str, Callable] | None = None,
) -> KnockoutResult:
    """Every knockout on every sample, measured at the final position against the clean run.

    Knockouts that block the same layers from the same queries (e.g. a sweep's last window and its
    "onwards" of the same layers) run once. `target` as in `vlmlib.interventions.patching.patch_experiment`:
    "answer", "top1" or "auto". Up to `max_rows` rows (knockouts x samples) share a forward pass.
    `reuse_vision`: replay the clean run's vision-tower output in the knockout passes (same numbers up
    to float rounding, since a knockout never touches the tower; False runs the tower every time).
    `lean`: each pass resumes from the clean run's residual state before the first knocked layer of its
    knockouts, skipping the decoder blocks before it (same numbers up to float rounding); passes stack
    knockouts in order of their first knocked layer so that the late ones share a pass that skips much.
    False runs every pass through the whole decoder.
    `keys`: key sets other than the image's, by name: fn(lm, inputs, batch samples) -> (batch, seq) bool
    positions, computed per batch (a knockout names one in `Knockout.keys`).
    """
    knockouts = check_knockouts(lm.num_layers, knockouts)  # every error before any forward pass
    keys = dict(keys or {})
    unknown = sorted({ko.keys for ko in knockouts} - {IMAGE_KEYS, *keys})
    if unknown:
        raise KnockoutConfigError(
            f"knockouts hide the key sets {unknown}, whose positions were not given: "
            "knockout_experiment(..., keys={name: fn(lm, inputs, samples) -> (batch, seq) bool})"
        )
    if batch_size < 1 or max_rows < 1:
        raise ValueError("batch_size and max_rows must be positive")
    samples = list(samples)
    if not samples:
        raise ValueError("no samples")
    # Ascending first layers: a pass skips up to its earliest one, and the short remainder pass is a late one.
    distinct = sorted(
        dict.fromkeys((ko.layers, ko.queries, ko.keys) for ko in knockouts),
        key=lambda run: min(run[0], default=lm.num_layers),
    )
    runs = [Knockout(layers, queries, keys=hidden) for layers, queries, hidden in distinct]
    index = {run: i for i, run in enumerate(distinct)}
    which = [index[(ko.layers, ko.queries, ko.keys)] for ko in knockouts]  # the caller's order
    states = knockout_resume_sites(lm, runs) if lean else []
    start = time.perf_counter()
    clean_parts, knocked_parts, used, longest = [], [], set(), 1
    tower = lm.model.get_submodule(lm.family.vision_tower)
    for i in range(0, len(samples), batch_size):
        batch = samples[i : i + batch_size]
        inputs = lm.encode_samples(batch)
        with recorded_output(tower) as seen:
            clean = run_clean(lm, inputs, states)
        tokens, texts, rule = condition_targets(lm, batch, clean.logits, "answer", target, [])
        used.add(rule)
        ids, valid = pad_tokens(tokens, clean.logits.device)
        longest = max(longest, ids.shape[1])
        masks = {name: fn(lm, inputs, batch) for name, fn in keys.items()}
        read_at = None
        if ids.shape[1] > 1:  # an answer of several tokens: teacher-forced after the prompt, scored whole
            inputs, read_at, _ = teacher_forced_inputs(lm, batch, inputs, texts, tokens)
            width = inputs["input_ids"].shape[1]  # the prompt's key sets, padded to the longer sequence
            masks = {name: _widened(m, width) for name, m in masks.items()}
            with recorded_output(tower) as seen:
                clean = run_clean(lm, inputs, states, read_at=read_at)
        vision_output = seen[0] if reuse_vision and len(seen) == 1 else None
        clean_parts.append(
            _measures(clean.logits if read_at is not None else clean.logits[:, None], ids, valid)
        )
        per_pass = max(1, max_rows // len(batch))
        chunks = []
        for j in range(0, len(runs), per_pass):
            logits = knockout_logits(
                lm, inputs, runs[j : j + per_pass], vision_output, clean if lean else None, masks, read_at
            )
            chunks.append(_measures(logits if read_at is not None else logits[:, :, None], ids, valid))
        knocked_parts.append({m: torch.cat([c[m] for c in chunks], dim=0) for m in chunks[0]})
    clean = {m: torch.cat([p[m] for p in clean_parts]).numpy() for m in clean_parts[0]}
    knocked = {m: torch.cat([p[m] for p in knocked_parts], dim=1).numpy()[which] for m in knocked_parts[0]}
    return KnockoutResult(
        knockouts,
        "answer" if used == {"answer"} else "top1",
        clean,
        knocked,
        seconds=time.perf_counter() - start,
        answer_tokens=longest,
    )


def _measures(logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per sample, on the CPU: log p(answer) (the sum over its tokens), the smallest margin of its tokens
    over the best other token, whether every token is top-1 (greedy decoding gives the whole answer), and
    the top-1 token where the answer starts (what the model answers first). `logits` (..., batch, k, vocab)
    predict the k answer tokens (`sequence_measures`); for a one-token answer (k = 1) these are
    `answer_measures`' numbers."""
    measures = sequence_measures(logits, ids, valid)
    out = {m: measures[m] for m in ("logprob", "logit_diff", "correct")}
    return {**{m: v.cpu() for m, v in out.items()}, "top1": logits[..., 0, :].argmax(dim=-1).cpu()}


def _widened(mask: torch.Tensor, width: int) -> torch.Tensor:
    """A (batch, seq) key mask of the prompt, False over the positions a teacher-forced answer adds."""
    extra = width - mask.shape[1]
    return mask if extra <= 0 else torch.nn.functional.pad(mask, (0, extra), value=False)


# ---------------------------------------------------------------- reading the sweep


def critical_layers(rows: Sequence[dict], drop: float = 0.2, z: float = 2.0) -> list[int]:
    """Single layers whose knockout lowers top-1 accuracy by more than `drop` (absolute) and by more than
    `z` paired standard errors: the layers where the answer reads the image."""
    out = []
    for r in rows:
        if r["scheme"] != "layer":
            continue
        se = r["delta_acc_se"] if r["delta_acc_se"] == r["delta_acc_se"] else 0.0
        if -r["delta_acc"] > drop and -r["delta_acc"] > z * se:
            out.extend(r["layers"])
    return sorted(set(out))


__all__ = [
    "ALL_QUERY_SETS",
    "IMAGE_KEYS",
    "Knockout",
    "KnockoutConfigError",
    "KnockoutResult",
    "QUERY_SETS",
    "SCHEMES",
    "answer_measures",
    "blocked_pairs",
    "check_knockouts",
    "critical_layers",
    "first_knocked",
    "image_knockout",
    "knockout_experiment",
    "knockout_logits",
    "key_mask",
    "knockout_resume_sites",
    "layer_sweep",
    "query_mask",
    "recorded_output",
    "replayed_output",
]
