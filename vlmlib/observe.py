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
    decoder.last_attn.M      eq. 8-9: attention mass of the final token on the keys of modality M
                                      (heads averaged); vision + text = 1
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

Attention mass without slowing the pass: with `attention="sdpa"` (the default) the decoder runs a
registered attention function that computes its output with torch's fused SDPA, plus one more SDPA
call whose values are the two modality indicators (zero-padded to the head size, so that the fused
kernel takes them), softmax(QK^T/√d + mask) @ [1_vis, 1_text]: each
query's mass on vision and text keys, without ever materializing the (T, T) weights. With
`attention="eager"` the decoder switches to eager attention for the pass and the masses are read
from the weights (the reference). Measured on CPU (benchmarks/observe_attention.py; tiny PaliGemma,
batch 4, 793 tokens): no attention readings 0.74 s, fused masses 1.19 s, eager decoder 2.25 s, whole
model eager 2.37 s; at a few hundred tokens or fewer the choice makes no difference. Readings
that need no attention weights never change the attention implementation.

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
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

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
        features = {k: list(self.features.get(k, [])) + list(other.features.get(k, []))
                    for k in dict.fromkeys([*self.features, *other.features])}
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
        return {name: {"mean": m.mean, "std": m.std, "sem": m.sem, "n": m.count}
                for name, m in sorted(self.stats.items()) if name.startswith(prefix)}


# ---------------------------------------------------------------- small tensor helpers


def _tensor(output) -> torch.Tensor:
    """The tensor a module output carries (attention modules return (out, weights))."""
    return output[0] if isinstance(output, tuple) else output


def _input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean of (b, T) `values` over the True positions of `mask`; NaN for an empty row.
    Stays on the model's device: a batch's readings are copied to the host once, at its end."""
    mask = mask.to(values.dtype)
    total = (values * mask).sum(-1)
    return total / mask.sum(-1)  # 0/0 = NaN: Moments skips it


def _segment_mean(values: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Mean of packed (N,) values over consecutive segments of the given lengths."""
    return torch.stack([chunk.mean() for chunk in torch.split(values, list(lengths))])


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12)


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x.float().norm(dim=-1)


# ---------------------------------------------------------------- attention implementation


def _observe_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention that also reports each query's mass on vision and text keys, if asked to.

    The output is what the model's SDPA (or, with softcapping, eager) attention returns. When the
    module carries a `_vlmlib_reader`, the per-query modality masses (batch, query, heads, 2) go to it.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    reader = getattr(module, "_vlmlib_reader", None)
    if kwargs.get("softcap") is not None:  # SDPA has no softcapping (Gemma 2): compute the weights
        eager = sys.modules[type(module).__module__].eager_attention_forward
        out, weights = eager(module, query, key, value, attention_mask, **kwargs)
        if reader is not None:
            reader(torch.einsum("bhqk,bkc->bqhc", weights.float(), reader.indicators.float()))
        return out, None
    out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if reader is not None:
        # Indicator values padded with zeros to the value width: fused kernels take only q/k/v of one
        # head size, and a 2-wide value falls back to the slow math path (measured 4x slower on CPU).
        ind = reader.indicators.to(value.dtype)[:, None].expand(-1, value.shape[1], -1, -1)
        ind = torch.nn.functional.pad(ind, (0, max(0, value.shape[-1] - ind.shape[-1])))
        masses, _ = sdpa_attention_forward(module, query, key, ind, attention_mask, **kwargs)
        reader(masses[..., :2])
    return out


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_FUNCTION, _observe_attention)
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
    lm.model.set_attn_implementation({key: implementation})
    try:
        yield
    finally:
        lm.model.set_attn_implementation({key: before})


# ---------------------------------------------------------------- one batch


class _Reader:
    """Receives per-query modality masses of one layer and turns them into per-sample readings."""

    def __init__(self, layer_rows: dict, layer: int, indicators, last, vis, txt):
        self.rows, self.layer = layer_rows, layer
        self.indicators, self.last, self.vis, self.txt = indicators, last, vis, txt

    def __call__(self, masses: torch.Tensor) -> None:
        """masses: (batch, query, heads, 2) for keys (vision, text)."""
        m = masses.float().mean(2)  # heads averaged, (b, T, 2)
        b = torch.arange(m.shape[0], device=m.device)
        last = m[b, self.last]  # (b, 2)
        rows = self.rows
        rows.setdefault("decoder.last_attn.vision", {})[self.layer] = last[:, 0]
        rows.setdefault("decoder.last_attn.text", {})[self.layer] = last[:, 1]
        n_keys = {"v": self.vis.sum(1).float(), "t": self.txt.sum(1).float()}
        for q, qmask in (("v", self.vis), ("t", self.txt)):
            n_q = qmask.sum(1).float()
            for k, col in (("v", 0), ("t", 1)):
                # NaN where padding rows are fully masked: keep them out with where, not a product
                total = torch.where(qmask, m[..., col], torch.zeros((), device=m.device)).sum(1)
                rows.setdefault(f"decoder.quadrant_mass.{q}{k}", {})[self.layer] = total / n_q
                rows.setdefault(f"decoder.quadrant.{q}{k}", {})[self.layer] = (
                    total / (n_q * n_keys[k]))


def _vision_blocks(lm):
    return list(lm.model.get_submodule(lm.family.vision_layers))


def _vision_lengths(lm, inputs, n_rows: int) -> list[int] | None:
    """Patches per sample in the vision tower's packed layout (Qwen2-VL), or None for (b, P, d)."""
    grid = inputs.get("image_grid_thw") if hasattr(inputs, "get") else None
    if grid is None:
        return None
    per_image = grid.prod(-1).tolist()
    if len(per_image) != n_rows:
        raise ValueError(f"{len(per_image)} images for {n_rows} prompts: the engine reads one image per sample")
    return per_image


@torch.no_grad()
def observe_batch(lm, inputs, readings: Iterable[str] = DEFAULT_READINGS, attention: str = "sdpa",
                  pool: Mapping[str, Callable] | None = None) -> Observation:
    """One forward pass over an encoded batch; the readings of its samples as an `Observation`.

    `pool`: extra token sets for the "pooled" reading, name -> fn(inputs) giving a (batch, T) bool mask.
    """
    readings = set(readings)
    unknown = readings - set(READINGS)
    if unknown:
        raise ValueError(f"unknown readings {sorted(unknown)}; known: {READINGS}")
    if attention not in ("sdpa", "eager"):
        raise ValueError(f"attention must be 'sdpa' (fused, masses computed alongside) or 'eager', not {attention!r}")
    model, family, L = lm.model, lm.family, lm.num_layers
    vis, txt = lm.vision_mask(inputs), lm.text_mask(inputs)
    masks = {"vision": vis, "text": txt}
    n = vis.shape[0]
    last = lm.last_index(inputs)
    obs = Observation(n_samples=n)
    rows: dict[str, dict[int, np.ndarray]] = {}  # statistic -> layer -> per-sample values
    pool_masks = dict(masks)
    for name, fn in (pool or {}).items():
        if name in masks:
            raise ValueError(f"pool name {name!r} is taken by the built-in pooling; choose another")
        pool_masks[name] = fn(inputs).to(vis.device).bool()
    pooled: dict[str, list] = {name: [None] * (L + 1) for name in pool_masks}
    handles, held = [], {}

    def put(name, layer, values):
        rows.setdefault(name, {})[layer] = values

    def state(layer, h):  # H^(layer): norms and pooled features
        if "update" in readings or "cosine" in readings:
            hn = _norm(h)
            for mod, mask in masks.items():
                put(f"decoder.norm.{mod}", layer, _token_mean(hn, mask))
        if "pooled" in readings:
            for mod, mask in pool_masks.items():
                w = mask.to(torch.float32)[..., None]
                pooled[mod][layer] = (h.float() * w).sum(1) / w.sum(1)

    def decoder_pre(layer):
        def hook(module, args, kwargs):
            held[("in", layer)] = _input(args, kwargs)
            if layer == 0:
                state(0, held[("in", 0)])
        return hook

    def keep(key):
        def hook(module, args, output):
            held[key] = _tensor(output)
        return hook

    def decoder_post(layer):
        def hook(module, args, output):
            h_in, h_out = held.pop(("in", layer)), _tensor(output)
            state(layer + 1, h_out)
            if "cosine" in readings:
                c = _cos(h_in, h_out)
                for mod, mask in masks.items():
                    put(f"decoder.cosine.{mod}", layer, _token_mean(c, mask))
            if "update" in readings:
                u = _norm(h_out - h_in)
                for mod, mask in masks.items():
                    put(f"decoder.update.{mod}", layer, _token_mean(u, mask))
            if "contributions" in readings:
                a, m = held.pop(("attn", layer)), held.pop(("mlp", layer))
                an, mn = _norm(a), _norm(m)
                share = an / (an + mn)
                for mod, mask in masks.items():
                    put(f"decoder.attn_norm.{mod}", layer, _token_mean(an, mask))
                    put(f"decoder.mlp_norm.{mod}", layer, _token_mean(mn, mask))
                    put(f"decoder.attn_share.{mod}", layer, _token_mean(share, mask))
                real = inputs["attention_mask"].bool()
                err = (h_out.float() - h_in.float() - a.float() - m.float()).abs().amax(-1)[real].max()
                obs.add_max("decoder.identity_error", err.item())
                obs.add_max("decoder.max_abs_state", h_out.float().abs().amax(-1)[real].max().item())
        return hook

    vision_lengths = _vision_lengths(lm, inputs, n) if "vision_tower" in readings else None

    def vision_reduce(values):  # per-token values of the vision tower -> per-sample means
        if vision_lengths is None:
            return values.mean(-1)
        return _segment_mean(values, vision_lengths)

    def vision_pre(layer):
        def hook(module, args, kwargs):
            held[("vin", layer)] = _input(args, kwargs)
            if layer == 0:
                put("vision_tower.norm.all", 0, vision_reduce(_norm(held[("vin", 0)])))
        return hook

    def vision_post(layer):
        def hook(module, args, output):
            h_in, h_out = held.pop(("vin", layer)), _tensor(output)
            a, m = held.pop(("vattn", layer)), held.pop(("vmlp", layer))
            an, mn = _norm(a), _norm(m)
            put("vision_tower.norm.all", layer + 1, vision_reduce(_norm(h_out)))
            put("vision_tower.cosine.all", layer, vision_reduce(_cos(h_in, h_out)))
            put("vision_tower.update.all", layer, vision_reduce(_norm(h_out - h_in)))
            put("vision_tower.attn_norm.all", layer, vision_reduce(an))
            put("vision_tower.mlp_norm.all", layer, vision_reduce(mn))
            put("vision_tower.attn_share.all", layer, vision_reduce(an / (an + mn)))
            err = (h_out.float() - h_in.float() - a.float() - m.float()).abs().max()
            obs.add_max("vision_tower.identity_error", err.item())
            obs.add_max("vision_tower.max_abs_state", h_out.float().abs().max().item())
        return hook

    readers = []
    try:
        need_decoder = readings & {"cosine", "update", "contributions", "pooled"}
        for layer in range(L):
            block = model.get_submodule(family.decoder_layers)[layer]
            if need_decoder:
                handles.append(block.register_forward_pre_hook(decoder_pre(layer), with_kwargs=True))
                handles.append(block.register_forward_hook(decoder_post(layer)))
            if "contributions" in readings:
                handles.append(family.site_module(model, "attn", layer).register_forward_hook(keep(("attn", layer))))
                handles.append(family.site_module(model, "mlp", layer).register_forward_hook(keep(("mlp", layer))))
        if "vision_tower" in readings:
            for layer, block in enumerate(_vision_blocks(lm)):
                handles.append(block.register_forward_pre_hook(vision_pre(layer), with_kwargs=True))
                handles.append(block.register_forward_hook(vision_post(layer)))
                handles.append(family.site_module(model, "vision_attn", layer).register_forward_hook(
                    keep(("vattn", layer))))
                handles.append(family.site_module(model, "vision_mlp", layer).register_forward_hook(
                    keep(("vmlp", layer))))
        implementation = None
        if "attention" in readings:
            indicators = torch.stack([vis, txt], -1)  # (b, T, 2): which keys are vision, which text
            for layer in range(L):
                reader = _Reader(rows, layer, indicators, last, vis, txt)
                module = family.site_module(model, "attn_weights", layer)
                if attention == "sdpa":
                    module._vlmlib_reader = reader
                    readers.append(module)
                else:
                    def weights_hook(module, args, output, reader=reader):
                        w = output[1]  # (b, h, q, k)
                        reader(torch.einsum("bhqk,bkc->bqhc", w.float(), reader.indicators.float()))
                    handles.append(module.register_forward_hook(weights_hook))
            implementation = ATTENTION_FUNCTION if attention == "sdpa" else "eager"
        with decoder_attention(lm, implementation) if implementation else contextlib.nullcontext():
            lm.forward_base(inputs)  # no LM head: no reading needs logits
    finally:
        for h in handles:
            h.remove()
        for module in readers:
            del module._vlmlib_reader
        held.clear()

    for name, per_layer in rows.items():
        values = torch.stack([per_layer[i] for i in sorted(per_layer)], dim=1)  # (b, layers)
        obs.add(name, values.double().cpu().numpy())
    if "pooled" in readings:
        for mod in pool_masks:
            obs.features[mod] = [torch.stack(pooled[mod], dim=1).cpu().numpy()]  # (b, L + 1, d)
    return obs


# ---------------------------------------------------------------- a dataset


def observe(lm, samples: Sequence, readings: Iterable[str] = DEFAULT_READINGS, batch_size: int = 8,
            attention: str = "sdpa", progress: bool = True, desc: str = "observe",
            pool: Mapping[str, Callable] | None = None,
            max_tokens_per_batch: int | None = DEFAULT_MAX_TOKENS_PER_BATCH) -> Observation:
    """Stream `samples` through the model in batches; the merged `Observation` of all of them.

    `pool`: extra token sets for the "pooled" reading (see `observe_batch`).
    `max_tokens_per_batch`: a batch with more rows x padded length is split in halves until it fits
    (None: never split)."""
    from tqdm import tqdm

    readings = tuple(readings)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens_per_batch is not None and max_tokens_per_batch < 1:
        raise ValueError(f"max_tokens_per_batch must be at least 1 (or None for no limit), got {max_tokens_per_batch}")
    total = Observation()
    with tqdm(total=len(samples), desc=desc, unit="sample", disable=not progress) as bar:
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
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
    from .trace import Trace

    with decoder_attention(lm, "eager"), Trace(lm, [f"attn_weights.{layer}"]) as tr:
        lm.forward_base(inputs)
    n = int(inputs["attention_mask"][row].sum())
    return tr[f"attn_weights.{layer}"][row].float().mean(0)[:n, :n].cpu().numpy()


__all__ = ["observe", "observe_batch", "encoded_within_budget", "DEFAULT_MAX_TOKENS_PER_BATCH", "Observation",
           "Moments", "attention_pattern", "decoder_attention",
           "READINGS", "DEFAULT_READINGS", "MODALITIES", "QUADRANTS"]
