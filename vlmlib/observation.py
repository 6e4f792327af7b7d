"""The observation engine: one unchanged forward pass, read at every layer, streamed over a dataset.

    obs = observe(lm, samples, batch_size=8)          # all default readings, with a progress bar
    obs.mean("decoder.cosine.vision")                  # (num_layers,) AvgSim per decoder layer
    obs.sem("decoder.attn_norm.text")                  # standard error across samples
    whole = first_half.merge(second_half)              # same numbers as one pass over both halves

Notation (the paper's Appendix F): H^(0) is the decoder's input (image features merged in), H^(l+1)
the output of decoder block l (0-based, as the paper's figures count layers), never the final-norm
output. Statistics of block l are indexed by l:

    decoder.cosine.M         eq. 1-2: cos(H_t^(l), H_t^(l+1)), mean over tokens t of modality M
    decoder.update.M         eq. 6:   ||H_t^(l+1) - H_t^(l)||
    decoder.norm.M           ||H_t^(l)|| for l = 0..L (L + 1 entries: the scale the updates act on)
    decoder.attn_norm.M      eq. 4:   ||Δattn_t||, Δattn exactly what attention adds to the residual
    decoder.mlp_norm.M       eq. 5:   ||Δmlp_t||
    decoder.attn_share.M     eq. 7:   ||Δattn_t|| / (||Δattn_t|| + ||Δmlp_t||), per token
    decoder.injection_norm.M ||Δextra_t||: what a family adds to the residual besides attention and the
                             MLP (`Family.residual_terms`: Qwen3-VL's DeepStack vision features after
                             its first decoder layers; 0 in the other layers); only for such a family.
                             The identity check counts it: H^(l+1) = H^(l) + Δattn + Δmlp + Δextra
    decoder.last_attn.M      eq. 8-9: attention mass of the final token on the keys of modality M
                                      (heads averaged); vision + text = 1
    decoder.last_attn.first  its mass on the first real token alone (where attention sinks form)
    decoder.last_attn_ratio.M         the mass on M over M's share of the prompt's tokens (1: as much
                                      as uniform attention gives M; > 1: more per token than uniform),
                                      per sample, so that a modality's token count is not read as
                                      attention to it
    decoder.last_attn_ratio_nosink.M  the same without the first real token, as key and in the count
                                      (the mass renormalised over the other keys): the sink control
    decoder.quadrant.QK      App. C:  mean attention weight over the block of queries of modality Q
                                      and keys of modality K (heads averaged; causally masked entries
                                      count as the zeros they are), QK in vv, vt, tv, tt
    decoder.quadrant_mass.QK          mean over queries of modality Q of their total mass on keys K
    vision_tower.<stat>.all  cosine, update, norm, attn_norm, mlp_norm, attn_share of the vision
                             tower's own layers over all its patches (no text there)

M is `vision` (image-token positions) or `text` (every other real token; padding never counts).
Every statistic is first averaged over the tokens of one sample, then across samples (eq. 2, 10);
`Moments` keeps the sums over samples (sum, sum of squares, count), so memory does not depend on the
number of samples and two halves of a dataset merge into the whole.

How the pass is read: one `vlmlib.trace.Trace` with a `read` callback (the library's one hook
mechanism) hands each site to the engine as the forward pass reaches it; the engine keeps a few
per-token values per layer and takes every per-sample mean once, at the end of the batch.

Attention mass without slowing the pass: with `attention="sdpa"` (the default) the decoder runs a
registered attention function that computes its output with torch's fused SDPA, plus one more SDPA
call whose values are the two modality indicators (zero-padded to the head size, so that the fused
kernel takes them), softmax(QK^T/√d + mask) @ [1_vis, 1_text]: each
query's mass on vision and text keys, without ever materializing the (T, T) weights. The masses
come back where attention weights would, so the trace's `attn_weights` sites read them. With
`attention="eager"` the decoder switches to eager attention for the pass and the masses are read
from the weights (the reference). The fused route costs a fraction of the eager one on long prompts
(benchmarks/observe_attention.py measures it; the benchmarks page has the numbers). Readings that
need no attention weights never change the attention implementation.

Memory at full size: the pass runs the model without its LM head (`lm.forward_base`): no reading
needs logits, and a full-vocabulary logit tensor (152k wide for Qwen2-VL, 257k for PaliGemma) costs
0.5-0.9 GB per batch in float32. `observe` splits a batch whose rows x sequence length exceed
`max_tokens_per_batch` (Qwen2-VL keeps photos near native size: 391 image tokens at 640x480, 15,552
for a 12 MP photo); readings merge exactly, so the split changes no number. A single sample longer
than the budget runs alone.

Pooled features for probing (`readings` including "pooled"): per sample and per state H^(0..L), the
mean over vision tokens and the mean over text tokens; `obs.pooled("vision")` is (n, L + 1, d).
These grow with n by nature, so they are opt-in. Other token sets are pooled alongside with
`pool={name: fn}`, `fn(inputs)` a (batch, T) bool mask (e.g. only a caption's tokens, see
`vlmlib.probing`); `obs.pooled(name)` then reads them.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .params import as_names
from .trace import Trace

MODALITIES = ("vision", "text")
QUADRANTS = ("vv", "vt", "tv", "tt")  # query modality, key modality
READINGS = ("cosine", "update", "contributions", "attention", "vision_tower", "pooled")
DEFAULT_READINGS = ("cosine", "update", "contributions", "attention", "vision_tower")
ATTENTION_FUNCTION = "vlmlib_observe"  # name under which the mass-reading attention is registered
# rows x padded sequence length per forward pass: 8 Qwen2-VL samples at 1920x1080 (2,700 tokens each)
# are split into 4 passes of 2, while the organisms' batches (8 x ~80 tokens) never are.
DEFAULT_MAX_TOKENS_PER_BATCH = 8192


# ---------------------------------------------------------------- mergeable statistics


@dataclass
class Moments:
    """Sums over samples of one per-sample statistic (any shape): mean, spread, and merge exactly."""

    sum: np.ndarray
    sumsq: np.ndarray
    count: np.ndarray  # samples that had a value in each cell (a sample without text has no text value)

    @classmethod
    def empty(cls, shape) -> Moments:
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=np.int64))

    def add(self, values) -> None:
        """Add per-sample values, shape (n_samples, *shape); NaN means 'no value for this sample'."""
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        v = np.where(ok, v, 0.0)
        self.sum += v.sum(0)
        self.sumsq += (v * v).sum(0)
        self.count += ok.sum(0)

    def merge(self, other: Moments) -> Moments:
        return Moments(self.sum + other.sum, self.sumsq + other.sumsq, self.count + other.count)

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum / self.count

    @property
    def std(self) -> np.ndarray:
        """Sample standard deviation across samples (ddof=1); NaN with fewer than two samples."""
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (self.sumsq - self.count * self.mean**2) / (self.count - 1)
        return np.sqrt(np.clip(var, 0.0, None))

    @property
    def sem(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.std / np.sqrt(self.count)


@dataclass
class Observation:
    """What one or more observation passes read: `Moments` per statistic, optional pooled features."""

    stats: dict[str, Moments] = field(default_factory=dict)
    n_samples: int = 0
    maxima: dict[str, float] = field(default_factory=dict)  # diagnostics: max residual-identity error
    features: dict[str, list[np.ndarray]] = field(default_factory=dict)  # pooled, per batch

    def add(self, name: str, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        if name not in self.stats:
            self.stats[name] = Moments.empty(values.shape[1:])
        self.stats[name].add(values)

    def add_max(self, name: str, value: float) -> None:
        self.maxima[name] = max(self.maxima.get(name, 0.0), float(value))

    def merge(self, other: Observation) -> Observation:
        """The observation of both datasets together (pooled features: self's samples first)."""
        stats = {name: m.merge(Moments.empty(m.sum.shape)) for name, m in self.stats.items()}  # copies
        for name, m in other.stats.items():
            stats[name] = stats[name].merge(m) if name in stats else m.merge(Moments.empty(m.sum.shape))
        maxima = dict(self.maxima)
        for name, v in other.maxima.items():
            maxima[name] = max(maxima.get(name, 0.0), v)
        features = {
            k: list(self.features.get(k, [])) + list(other.features.get(k, []))
            for k in dict.fromkeys([*self.features, *other.features])
        }
        return Observation(stats, self.n_samples + other.n_samples, maxima, features)

    # ------------------------------------------------------------ reading

    def __contains__(self, name: str) -> bool:
        return name in self.stats

    def _get(self, name: str) -> Moments:
        if name not in self.stats:
            raise KeyError(f"no statistic {name!r} in this observation; it has: {sorted(self.stats)}")
        return self.stats[name]

    def mean(self, name: str) -> np.ndarray:
        return self._get(name).mean

    def std(self, name: str) -> np.ndarray:
        return self._get(name).std

    def sem(self, name: str) -> np.ndarray:
        return self._get(name).sem

    def ratio_of_means(self, modality: str, prefix: str = "decoder") -> np.ndarray:
        """Eq. 7 read the other way: mean ||Δattn|| / (mean ||Δattn|| + mean ||Δmlp||)."""
        a, m = self.mean(f"{prefix}.attn_norm.{modality}"), self.mean(f"{prefix}.mlp_norm.{modality}")
        return a / (a + m)

    def pooled(self, modality: str) -> np.ndarray:
        """(n_samples, L + 1, d) mean-pooled states H^(0..L) over the tokens of `modality`."""
        if modality not in self.features:
            raise KeyError("no pooled features: observe with readings including 'pooled'")
        return np.concatenate(self.features[modality])

    def summary(self, prefix: str = "") -> dict:
        """JSON-ready {name: {mean, std, sem, n}} of every statistic whose name starts with `prefix`."""
        return {
            name: {"mean": m.mean, "std": m.std, "sem": m.sem, "n": m.count}
            for name, m in sorted(self.stats.items())
            if name.startswith(prefix)
        }


# ---------------------------------------------------------------- small tensor helpers


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.float(), dim=-1)


def _max_abs(x: torch.Tensor) -> torch.Tensor:
    """Per-token largest absolute entry, without an |x| temporary (torch's inf-norm is much slower on CPU)."""
    x = x.float()
    return torch.maximum(x.amax(-1), x.amin(-1).neg_())


def _mean_weights(masks: torch.Tensor) -> torch.Tensor:
    """(..., T, k) bool masks as weights that average over each mask's tokens (NaN for an empty one),
    so that a per-token (..., m, T) tensor @ weights is its k masked means in one product."""
    masks = masks.float()
    return masks / masks.sum(-2, keepdim=True)  # 0/0 = NaN: Moments skips it


# ---------------------------------------------------------------- attention implementation


class KeyModalities:
    """Which keys are vision and which text, (batch, T, 2), while an observation pass reads attention
    masses; and the same as SDPA values, built once per pass rather than once per layer."""

    def __init__(self, indicators: torch.Tensor):
        self.indicators = indicators  # (batch, T, channels): vision, text, and the first real token
        self._values: dict = {}

    def values_like(self, value: torch.Tensor) -> torch.Tensor:
        """The indicators as `value` is shaped (batch, kv heads, T, head size), zero-padded: fused kernels
        take only q/k/v of one head size, and a 2-wide value falls back to the slow math path."""
        key = (value.shape, value.dtype, value.device)
        if key not in self._values:
            b, heads, T, size = value.shape
            channels = self.indicators.shape[-1]
            padded = value.new_zeros(b, heads, T, max(size, channels))
            padded[..., :channels] = self.indicators.to(value.dtype)[:, None]
            self._values[key] = padded
        return self._values[key]


# Set only during an observation pass that reads attention masses (a context variable: no module
# carries state of a pass).
_KEY_MODALITIES: contextvars.ContextVar[KeyModalities | None] = contextvars.ContextVar(
    "vlmlib_key_modalities", default=None
)


@contextlib.contextmanager
def reading_masses(keys: KeyModalities | None):
    token = _KEY_MODALITIES.set(keys)
    try:
        yield
    finally:
        _KEY_MODALITIES.reset(token)


def observe_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention that also reports each query's mass on vision and text keys, during a pass that reads them.

    The output is what the model's SDPA (or, with softcapping, eager) attention returns. Inside
    `reading_masses`, the per-query modality masses (batch, query, heads, 2) come back where the
    attention weights would: the trace's `attn_weights` site reads them there.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    keys = _KEY_MODALITIES.get()
    if kwargs.get("softcap") is not None:  # SDPA has no softcapping (Gemma 2): compute the weights
        eager = sys.modules[type(module).__module__].eager_attention_forward
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            # the mask is SDPA's (True: attend); eager attention adds its mask to the scores
            attention_mask = torch.zeros(
                attention_mask.shape, dtype=query.dtype, device=query.device
            ).masked_fill_(~attention_mask, torch.finfo(query.dtype).min)
        out, weights = eager(module, query, key, value, attention_mask, **kwargs)
        if keys is None:
            return out, None
        return out, torch.einsum("bhqk,bkc->bqhc", weights.float(), keys.indicators.float())
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if keys is None:
        return out, None
    # The same fused kernel once more with the key indicators as values:
    # softmax(QK^T/√d + mask) @ [1_vis, 1_text, 1_first]
    masses, _ = sdpa_attention_forward(module, query, key, keys.values_like(value), attention_mask, **kwargs)
    return out, masses[..., : keys.indicators.shape[-1]]


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_FUNCTION, observe_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_FUNCTION, sdpa_mask)


def _text_config_key(model) -> str:
    for key in model.config.sub_configs:
        if key == "text_config":
            return key
    raise ValueError(f"{type(model).__name__} has no text_config to set an attention implementation on")


@contextlib.contextmanager
def decoder_attention(lm, implementation: str):
    """Run the decoder (only) with another attention implementation inside the block; restored after."""
    key = _text_config_key(lm.model)
    before = getattr(lm.model.config, key)._attn_implementation
    if implementation == before:
        yield
        return
    if implementation == ATTENTION_FUNCTION:
        _register_attention()
    _set_attention(lm.model, key, implementation)
    try:
        yield
    finally:
        _set_attention(lm.model, key, before)


# Per model, implementation -> what `set_attn_implementation` made of it. That call checks the
# implementation and walks every module (twice per observed batch), yet all it changes
# for one sub-config is that config's field, read afresh by every attention call: once checked, a
# switch is that one assignment.
_CHECKED_SWITCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _set_attention(model, key: str, implementation: str) -> None:
    checked = _CHECKED_SWITCHES.setdefault(model, {})
    if implementation in checked:
        getattr(model.config, key)._attn_implementation = checked[implementation]
    else:
        model.set_attn_implementation({key: implementation})
        checked[implementation] = getattr(model.config, key)._attn_implementation


# ---------------------------------------------------------------- one batch


def _vision_lengths(lm, inputs, n_rows: int) -> list[int] | None:
    """Patches per sample in the vision tower's packed layout (Qwen2-VL), or None for (b, P, d)."""
    grid = inputs.get("image_grid_thw") if hasattr(inputs, "get") else None
    if grid is None:
        return None
    per_image = grid.prod(-1).tolist()
    if len(per_image) != n_rows:
        raise ValueError(
            f"{len(per_image)} images for {n_rows} prompts: the engine reads one image per sample"
        )
    return per_image


def _vision_crops(lm, inputs, n_rows: int) -> list[int] | None:
    """Vision-tower rows (crops) per sample where a family splits images, else None (one row each)."""
    crops = lm.family.vision_crops(lm.model, inputs)
    if crops is not None and len(crops) != n_rows:
        raise ValueError(
            f"{len(crops)} crop counts for {n_rows} prompts: the engine reads one image per sample"
        )
    return crops


class _Stream:
    """Per-token readings of one residual stream (the decoder's or the vision tower's), layer by layer.

    A state is dropped as soon as the next one is read. Per layer only a few per-token values are kept
    (norms of states, updates and contributions, identity-error maxima); what derives from them is
    computed once for all layers at the end: attention shares, and cosines from the law of cosines,
    cos(a, b) = (|a|² + |b|² - |b - a|²) / (2 |a| |b|), in float64. A small model's pass costs about
    the number of tensor operations per layer, not their size, so a layer takes a few, and makes
    no temporary it does not need (on CPU, fresh large buffers cost page faults).
    """

    def __init__(
        self,
        norms: bool,
        cosine: bool,
        update: bool,
        contributions: bool,
        pool_weights: torch.Tensor | None = None,
    ):
        self.read_norms, self.read_cosine, self.read_update = norms or cosine, cosine, update
        self.update_norms = update or cosine  # the cosines are computed from them
        self.read_contributions, self.pool_weights = contributions, pool_weights
        self.norms, self.updates, self.attn_norms, self.mlp_norms = [], [], [], []
        self.extra_norms: list[torch.Tensor | None] = []  # per layer: the extra residual terms' norm
        self.identity_errors, self.state_maxima, self.pooled = [], [], []
        self.state: torch.Tensor | None = None

    def input(self, h: torch.Tensor) -> None:
        self.state = h.contiguous()
        self._read_state(self.state)

    def _read_state(self, h: torch.Tensor) -> None:
        if self.read_norms:
            self.norms.append(_norm(h))
        if self.pool_weights is not None:
            self.pooled.append(torch.bmm(self.pool_weights, h.float()))

    def output(
        self,
        h_out: torch.Tensor,
        attn: torch.Tensor | None,
        mlp: torch.Tensor | None,
        extra: list[torch.Tensor] | None = None,
    ) -> None:
        """One layer's output state and what its sublayers added (`extra`: the family's other residual
        terms of this layer, e.g. Qwen3-VL's DeepStack injection)."""
        # SigLIP's residual stream is laid out transposed (width strided): one copy per state makes the
        # reductions over the width several times faster on CPU (a no-op for contiguous states)
        h_in, h_out = self.state, h_out.contiguous()
        self.state = h_out
        self._read_state(h_out)
        if not (self.update_norms or self.read_contributions):
            return
        delta = h_out.float() - h_in.float()
        if self.update_norms:
            self.updates.append(_norm(delta))
        if self.read_contributions:
            self.attn_norms.append(_norm(attn))
            self.mlp_norms.append(_norm(mlp))
            residue = delta.sub_(attn.float()).sub_(mlp.float())  # in place: delta is ours
            added = None
            for term in extra or ():
                added = term.float() if added is None else added + term.float()
            if added is not None:
                residue.sub_(added)
            self.extra_norms.append(None if added is None else _norm(added))
            residue.abs_()
            self.identity_errors.append(residue.amax(-1))
            self.state_maxima.append(_max_abs(h_out))

    def per_token(self, dim: int) -> dict[str, torch.Tensor]:
        """Statistic -> per-token values of every layer (or state), stacked along `dim`."""
        out = {}
        if not (self.norms or self.attn_norms):  # nothing read (the stream's sites were not traced)
            return out
        if self.norms:
            out["norm"] = torch.stack(self.norms, dim)
        if self.updates:
            updates = torch.stack(self.updates, dim)
            if self.read_update:
                out["update"] = updates
        if self.read_cosine:  # eps as torch's cosine_similarity: each norm clamped at 1e-12
            norms, layers = out["norm"].double().clamp_min(1e-12), updates.shape[dim]
            before, after = norms.narrow(dim, 0, layers), norms.narrow(dim, 1, layers)
            cosine = (before**2 + after**2 - updates.double() ** 2) / (2 * before * after)
            out["cosine"] = cosine.float()
        if self.attn_norms:
            attn, mlp = torch.stack(self.attn_norms, dim), torch.stack(self.mlp_norms, dim)
            out.update(attn_norm=attn, mlp_norm=mlp, attn_share=attn / (attn + mlp))
            if any(x is not None for x in self.extra_norms):  # zero in the layers without an extra term
                zero = torch.zeros_like(self.attn_norms[0])
                out["injection_norm"] = torch.stack([zero if x is None else x for x in self.extra_norms], dim)
        return out


class _PassReader:
    """The `read` of one observation pass's `Trace`: each site goes to the stream it belongs to as the
    pass reaches it, and the per-sample readings are taken once, at the end (no host sync before)."""

    def __init__(self, lm, inputs, readings: set[str], attention: str, pool: Mapping[str, Callable] | None):
        self.eager_weights = attention == "eager"
        vis, txt = lm.vision_mask(inputs), lm.text_mask(inputs)
        self.n = vis.shape[0]
        self.real = inputs["attention_mask"].bool()
        self.modalities = torch.stack([vis, txt], -1)  # (b, T, 2), in MODALITIES order
        self.last = lm.last_index(inputs)
        # keys: the two modalities and the first real token (left padding: not position 0)
        self.first = self.real & (self.real.cumsum(1) == 1)
        self.key_modalities = (
            KeyModalities(torch.cat([self.modalities, self.first[..., None]], -1))
            if "attention" in readings
            else None
        )
        self.pool_names: list[str] = list(MODALITIES)
        pool_masks = [vis, txt]
        for name, fn in (pool or {}).items():
            if name in MODALITIES:
                raise ValueError(f"pool name {name!r} is taken by the built-in pooling; choose another")
            self.pool_names.append(name)
            pool_masks.append(fn(inputs).to(vis.device).bool())
        pool_weights = None
        if "pooled" in readings:
            pool_weights = _mean_weights(torch.stack(pool_masks, -1)).transpose(1, 2)  # (b, pools, T)
        self.decoder = _Stream(
            "update" in readings,
            "cosine" in readings,
            "update" in readings,
            "contributions" in readings,
            pool_weights,
        )
        self.vision = _Stream(True, True, True, True)
        self.vision_lengths = _vision_lengths(lm, inputs, self.n) if "vision_tower" in readings else None
        # several tower rows (crops of a split image) per sample, or None (one each)
        self.vision_crops = (
            _vision_crops(lm, inputs, self.n)
            if "vision_tower" in readings and self.vision_lengths is None
            else None
        )
        self._segments: torch.Tensor | None = None
        self.masses: list[torch.Tensor] = []  # per layer, (b, T, 2) heads averaged
        self.held: dict[str, torch.Tensor] = {}  # the current layer's sublayer contributions
        # the family's residual terms besides attention and the MLP, per decoder layer (Qwen3-VL: DeepStack)
        self.terms = (
            {layer: lm.family.residual_terms(lm.model, layer) for layer in range(lm.num_layers)}
            if "contributions" in readings
            else {}
        )
        self.sites = self._sites(lm, readings, self.terms)

    @staticmethod
    def _sites(lm, readings, terms: Mapping[int, tuple[str, ...]]) -> list[str]:
        sites = []
        if readings & {"cosine", "update", "contributions", "pooled"}:
            sites.append("embed.0")
            for layer in range(lm.num_layers):
                if "contributions" in readings:
                    sites += [f"attn.{layer}", f"mlp.{layer}"]
                    sites += [f"{kind}.{layer}" for kind in terms.get(layer, ())]
                sites.append(f"resid.{layer}")
        if "attention" in readings:
            sites += [f"attn_weights.{layer}" for layer in range(lm.num_layers)]
        if "vision_tower" in readings:
            sites.append("vision_embed.0")
            for layer in range(lm.num_vision_layers):
                sites += [f"vision_attn.{layer}", f"vision_mlp.{layer}", f"vision.{layer}"]
        return sites

    def __call__(self, site: str, value: torch.Tensor) -> None:
        kind, _, layer = site.partition(".")
        if kind == "resid":
            # a term a pass did not reach adds nothing (DeepStack without an image)
            extra = [self.held.pop(term, None) for term in self.terms.get(int(layer), ())]
            extra = [term for term in extra if term is not None]
            self.decoder.output(value, self.held.pop("attn", None), self.held.pop("mlp", None), extra)
        elif kind == "vision":
            self.vision.output(value, self.held.pop("vision_attn"), self.held.pop("vision_mlp"))
        elif kind == "embed":
            self.decoder.input(value)
        elif kind == "vision_embed":
            self.vision.input(value)
        elif kind == "attn_weights":
            self._attention(value)
        else:  # a sublayer's contribution, read with its layer's output
            self.held[kind] = value

    def _attention(self, value: torch.Tensor) -> None:
        """Masses (b, T, heads, 3) on vision, text and the first token, from the mass-reading attention, or
        eager weights (b, heads, T, T)."""
        if self.eager_weights:
            value = torch.einsum("bhqk,bkc->bqhc", value.float(), self.key_modalities.indicators.float())
        self.masses.append(value.float().mean(2))  # heads averaged

    # ------------------------------------------------------------ the batch's readings

    def observation(self) -> Observation:
        """Per-sample readings of the pass. Each statistic is reduced on its own (never in one product
        with others that another choice of readings would leave out), so that its numbers do not
        depend on which other readings were asked for."""
        per_sample: dict[str, torch.Tensor] = {}  # name -> (b, layers)
        weights = _mean_weights(self.modalities)  # (b, T, 2)
        for stat, values in self.decoder.per_token(dim=1).items():  # (b, layers, T)
            means = torch.bmm(values, weights)  # (b, layers, 2)
            for i, mod in enumerate(MODALITIES):
                per_sample[f"decoder.{stat}.{mod}"] = means[..., i]
        packed = self.vision_lengths is not None
        for stat, values in self.vision.per_token(dim=0 if packed else 1).items():
            per_sample[f"vision_tower.{stat}.all"] = self._vision_means(values)
        if self.masses:
            per_sample.update(self._attention_readings())
        maxima = {}
        for prefix, stream in (("decoder", self.decoder), ("vision_tower", self.vision)):
            if stream.identity_errors:
                errors, states = torch.stack(stream.identity_errors), torch.stack(stream.state_maxima)
                if prefix == "decoder":  # padding never counts
                    zero = torch.zeros((), device=errors.device)
                    errors, states = (
                        torch.where(self.real, errors, zero),
                        torch.where(self.real, states, zero),
                    )
                maxima[f"{prefix}.identity_error"], maxima[f"{prefix}.max_abs_state"] = (
                    errors.amax(),
                    states.amax(),
                )

        obs = Observation(n_samples=self.n)
        if (
            per_sample
        ):  # every statistic a block of columns of one (samples, columns) table: one copy, one sum
            table = torch.cat(list(per_sample.values()), 1).double().cpu().numpy()
            ok = np.isfinite(table)  # NaN: no value for this sample (e.g. no text tokens)
            table = np.where(ok, table, 0.0)
            sums, sumsqs, counts = table.sum(0), (table * table).sum(0), ok.sum(0)
            start = 0
            for name, values in per_sample.items():
                cols = slice(start, start + values.shape[1])
                start = cols.stop
                obs.stats[name] = Moments(
                    sums[cols].copy(), sumsqs[cols].copy(), counts[cols].astype(np.int64)
                )
        if maxima:
            for name, value in zip(maxima, torch.stack(list(maxima.values())).double().cpu().tolist()):
                obs.add_max(name, value)
        if self.decoder.pooled:
            pooled = torch.stack(self.decoder.pooled, 1).cpu()  # (b, L + 1, pools, d)
            for i, name in enumerate(self.pool_names):
                obs.features[name] = [pooled[:, :, i].contiguous().numpy()]
        return obs

    def _token_share_ratios(self, last: torch.Tensor) -> dict[str, torch.Tensor]:
        """The final token's mass on each modality over that modality's share of the keys it sees (every
        real token), with and without the first real token (b, L) each; NaN for a modality with no keys."""
        counts = self.modalities.float().sum(1)  # (b, 2)
        first_of = (self.modalities & self.first[..., None]).float().sum(1)  # (b, 2): the first's modality
        share = counts / counts.sum(-1, keepdim=True)
        share_nosink = (counts - first_of) / (counts - first_of).sum(-1, keepdim=True)
        mass = last[..., :2]
        mass_nosink = (mass - last[..., 2:3] * first_of[:, None]) / (1 - last[..., 2:3])
        out = {}
        for i, mod in enumerate(MODALITIES):
            out[f"decoder.last_attn_ratio.{mod}"] = mass[..., i] / share[:, None, i]
            out[f"decoder.last_attn_ratio_nosink.{mod}"] = mass_nosink[..., i] / share_nosink[:, None, i]
        return out

    def _vision_means(self, values: torch.Tensor) -> torch.Tensor:
        """(b, layers) per-sample means of per-token vision-tower values: (b, layers, P), packed (layers, N)
        (Qwen2-VL), or (crops, layers, P) with several crops per sample (Idefics3's split images): the mean
        of a sample's crop means, each crop having P patches, is the mean over all its patches."""
        lengths = self.vision_lengths
        if lengths is None and self.vision_crops is not None:
            values, lengths = values.mean(-1).T, self.vision_crops  # (layers, crops)
        if lengths is None:
            return values.mean(-1)
        if self._segments is None:  # (N, b): averages each sample's run of patches (or crops)
            owner = torch.repeat_interleave(
                torch.arange(self.n, device=values.device),
                torch.tensor(lengths, device=values.device),
            )
            self._segments = _mean_weights(torch.nn.functional.one_hot(owner, self.n).bool())
        return (values @ self._segments).T

    def _attention_readings(self) -> dict[str, torch.Tensor]:
        masses = torch.stack(self.masses, 1)  # (b, L, T, 3): each query's mass on vision, text, first
        rows = torch.arange(self.n, device=masses.device)
        last = masses[rows, :, self.last]  # (b, L, 3)
        out = {f"decoder.last_attn.{mod}": last[..., i] for i, mod in enumerate(MODALITIES)}
        out["decoder.last_attn.first"] = last[..., 2]
        out.update(self._token_share_ratios(last))
        masses = masses[..., :2]
        # NaN where padding rows are fully masked: keep them out with where, not a product
        masses = torch.where(self.real[:, None, :, None], masses, torch.zeros((), device=masses.device))
        queries = self.modalities.float()
        totals = torch.einsum("btq,bltk->blqk", queries, masses)  # (b, L, query modality, key modality)
        n_queries = queries.sum(1)[:, None, :, None]
        n_keys = queries.sum(1)[:, None, None, :]
        mass, mean = totals / n_queries, totals / (n_queries * n_keys)
        for qi, q in enumerate("vt"):
            for ki, k in enumerate("vt"):
                out[f"decoder.quadrant_mass.{q}{k}"] = mass[..., qi, ki]
                out[f"decoder.quadrant.{q}{k}"] = mean[..., qi, ki]
        return out


@torch.no_grad()
def observe_batch(
    lm,
    inputs,
    readings: Iterable[str] = DEFAULT_READINGS,
    attention: str = "sdpa",
    pool: Mapping[str, Callable] | None = None,
) -> Observation:
    """One forward pass over an encoded batch; the readings of its samples as an `Observation`.

    `pool`: extra token sets for the "pooled" reading, name -> fn(inputs) giving a (batch, T) bool mask.
    """
    readings = set(as_names(readings, "readings"))
    unknown = readings - set(READINGS)
    if unknown:
        raise ValueError(f"unknown readings {sorted(unknown)}; known: {READINGS}")
    if attention not in ("sdpa", "eager"):
        raise ValueError(
            f"attention must be 'sdpa' (fused, masses computed alongside) or 'eager', not {attention!r}"
        )
    reader = _PassReader(lm, inputs, readings, attention, pool)
    implementation, keys = None, None
    if "attention" in readings:
        implementation = ATTENTION_FUNCTION if attention == "sdpa" else "eager"
        keys = reader.key_modalities if attention == "sdpa" else None
    with (
        decoder_attention(lm, implementation) if implementation else contextlib.nullcontext(),
        reading_masses(keys),
        Trace(lm, reader.sites, read=reader),
    ):
        lm.forward_base(inputs)  # no LM head: no reading needs logits
    return reader.observation()


# ---------------------------------------------------------------- a dataset


def observe(
    lm,
    samples: Sequence,
    readings: Iterable[str] = DEFAULT_READINGS,
    batch_size: int = 8,
    attention: str = "sdpa",
    progress: bool = True,
    desc: str = "observe",
    pool: Mapping[str, Callable] | None = None,
    max_tokens_per_batch: int | None = DEFAULT_MAX_TOKENS_PER_BATCH,
) -> Observation:
    """Stream `samples` through the model in batches; the merged `Observation` of all of them.

    `pool`: extra token sets for the "pooled" reading (see `observe_batch`).
    `max_tokens_per_batch`: a batch with more rows x padded length is split in halves until it fits
    (None: never split)."""
    from tqdm import tqdm

    readings = tuple(as_names(readings, "readings"))
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens_per_batch is not None and max_tokens_per_batch < 1:
        raise ValueError(
            f"max_tokens_per_batch must be at least 1 (or None for no limit), got {max_tokens_per_batch}"
        )
    total = Observation()
    with tqdm(total=len(samples), desc=desc, unit="sample", disable=not progress) as bar:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            for inputs in encoded_within_budget(lm, batch, max_tokens_per_batch):
                total = total.merge(observe_batch(lm, inputs, readings, attention, pool))
            bar.update(len(batch))
    return total


def encoded_within_budget(lm, samples: Sequence, max_tokens: int | None):
    """Encoded batches of `samples`, in order, each with rows x padded length <= `max_tokens`
    (halving as often as needed; one sample alone is never split)."""
    inputs = lm.encode_samples(samples)
    rows, length = inputs["input_ids"].shape
    if max_tokens is None or rows * length <= max_tokens or rows == 1:
        yield inputs
        return
    del inputs
    half = rows // 2
    yield from encoded_within_budget(lm, samples[:half], max_tokens)
    yield from encoded_within_budget(lm, samples[half:], max_tokens)


# ---------------------------------------------------------------- one sample's full pattern


@torch.no_grad()
def attention_pattern(lm, inputs, layer: int, row: int = 0) -> np.ndarray:
    """Head-averaged (T, T) attention weights of decoder `layer` for one row of a batch (real tokens
    only), read with eager attention for this one pass: the picture behind the quadrant means."""
    with decoder_attention(lm, "eager"), Trace(lm, [f"attn_weights.{layer}"]) as tr:
        lm.forward_base(inputs)
    n = int(inputs["attention_mask"][row].sum())
    return tr[f"attn_weights.{layer}"][row].float().mean(0)[:n, :n].cpu().numpy()


__all__ = [
    "observe",
    "observe_batch",
    "encoded_within_budget",
    "DEFAULT_MAX_TOKENS_PER_BATCH",
    "Observation",
    "Moments",
    "attention_pattern",
    "decoder_attention",
    "READINGS",
    "DEFAULT_READINGS",
    "MODALITIES",
    "QUADRANTS",
]
