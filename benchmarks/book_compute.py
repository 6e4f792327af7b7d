"""What the book's compute costs, per chapter kind, against the naive route and nnsight: one table.

    nice -n 10 .venv/bin/python benchmarks/book_compute.py [--n-samples 24] [--repeats 3] [--threads 2]
    .venv/bin/python benchmarks/book_compute.py --full-structure      # on a GPU: full-size random weights
    .venv/bin/python benchmarks/book_compute.py --standin-size full --depths 7 8 --models qwen2vl-2b \
        --n-samples 8 --skip-naive --skip-nnsight --repeats 1 --threads 1   # a real-width slice on a CPU

Per model it times, with the same samples and settings (batch size, chapters' default patch
configurations), each piece of the book's model work, repeats interleaved round-robin (a busy spell
slows every configuration alike) and the median taken:

    forward            plain forward without LM head over pre-encoded batches (the observation floor)
    observe (1 pass)   the union of chapters 1/2/4/6's readings, same pre-encoded batches
    ch1 ch2 ch4 ch6    `observe` as each chapter calls it (encoding included), a pass each
    shared 1/2/4/6     the same four chapters served by one pass (`vlmlib.obscache`'s union)
    ch5                `probing.pooled_features` (three prompts: three passes)
    ch3 ch7            `patching.patch_experiment` with the chapter's default configurations
    ch8                `knockout.knockout_experiment` with the chapter's sweep (both query sets; single
                       layers, windows, onwards), 128 rows a pass as the chapter runs it
    naive *            batch 1; whole model loaded with eager attention; every pass with
                       output_hidden_states and output_attentions; forward hooks where the outputs lack a
                       site (sublayer outputs, vision-tower blocks); the same reductions; a pass per chapter;
                       patching: a clean rerun per configuration and sample, one configuration per pass,
                       every block computed; knockouts likewise (a clean rerun and a full pass, tower
                       included, per knockout and sample)
    nnsight *          nnsight 0.8.1 traces of the same model (batched like ours): one trace per batch and
                       chapter saving the sites the chapter reads (eager-attention copy for chapter 4's
                       weights), same reductions; patching: one clean trace per batch, then one trace per
                       configuration writing the saved sources into the targets; no chapter 8 (its
                       whole-book ratio covers chapters 1-7 on both sides)

Peak memory is the peak above the level before the call: on CPU the bytes allocated through the C
allocator (glibc mallinfo2, where torch's CPU tensors live; tracemalloc does not see them), sampled
every 2 ms by a thread, so a spike shorter than that can be missed; on a GPU
torch.cuda.max_memory_allocated (exact). The FLOP floor counts 2 x (weights used) x (tokens) for the
forward passes the study needs at minimum (see `flop_floor`), plus the attention scores; one dense
matmul's measured rate on the same device and dtype (`matmul_rate`) turns it into a time, and our
whole-book compute is given as a multiple of that time.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlmlib.data import load_samples  # noqa: E402
from vlmlib.interventions.knockout import QUERY_SETS, knockout_experiment, layer_sweep  # noqa: E402
from vlmlib.models import load_model, wrap_model  # noqa: E402
from vlmlib.paper.chapters import chapter_specs, shared_readings  # noqa: E402
from vlmlib.paper.groups import front_groups, model_groups, scaled_size  # noqa: E402

BOOK_READINGS = shared_readings()  # the one observation pass chapters 1, 2, 4 and 6 share
# chapter number -> what it reads from that pass
CHAPTER_READINGS = {int(name[:2]): spec.readings for name, spec in chapter_specs().items() if spec.readings}
from vlmlib.interventions.patching import (  # noqa: E402
    attention_patches,
    check_patches,
    front_patches,
    patch_experiment,
    run_patched,
)
from vlmlib.interventions.resume import run_clean  # noqa: E402
from vlmlib.observation import observe, observe_batch  # noqa: E402
from vlmlib.probing import DEFAULT_FEATURE_SETS, PROMPT_OF, load_probe_samples, pooled_features  # noqa: E402

OBS_CHAPTERS = ("ch1", "ch2", "ch4", "ch6")


# ---------------------------------------------------------------- measuring


def _mallinfo():
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (n, ctypes.c_size_t)
                for n in (
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                ).split()
            ]

        fn = ctypes.CDLL("libc.so.6").mallinfo2
        fn.restype = MallInfo2
        fn()
        return fn
    except (OSError, AttributeError):
        return None


_MALLINFO = _mallinfo()


class PeakMemory:
    """Peak memory above the starting level during a block: CUDA allocator stats, or sampled RSS."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        """Bytes the C allocator has handed out (glibc mallinfo2: torch's CPU tensors come from it), or
        the resident set where mallinfo2 is missing (RSS hides reuse of freed memory)."""
        if _MALLINFO is not None:
            m = _MALLINFO()
            return m.uordblks + m.hblkhd
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self._rss()
        self._high = self.start
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.002):
                self._high = max(self._high, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._high, self._rss()) - self.start


def measure(work: dict, repeats: int, device: torch.device) -> dict:
    """{name: (median seconds, max peak bytes)}; one warm-up each, then repeats round-robin."""
    times = {k: [] for k in work}
    peaks = {k: 0 for k in work}
    for name, fn in work.items():
        fn()  # warm-up: first-call costs (kernel selection, lazy imports) are not the work
    for _ in range(repeats):
        for name, fn in work.items():
            gc.collect()
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            peaks[name] = max(peaks[name], mem.peak)
    return {k: (statistics.median(times[k]), peaks[k]) for k in work}


def matmul_rate(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> tuple[float, int]:
    """(FLOP/s, n) of one dense n x n matmul in the run's dtype on the run's device, median of repeats:
    the rate this device's arithmetic reaches, against which the FLOP floor becomes a time (n = 4096
    on a GPU, 1024 on a CPU)."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times[1:]), n


# ---------------------------------------------------------------- shared reductions (naive and nnsight)


def _mean(values, mask):
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1)


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12)


def reduce_decoder(states, attn, mlp, weights, masks, readings, last) -> dict:
    """The observation chapters' per-sample decoder statistics from saved tensors (what ours computes)."""
    out = {}
    for layer in range(len(states) - 1):
        h_in, h_out = states[layer], states[layer + 1]
        for mod, mask in masks.items():
            if readings & {"cosine", "update"}:
                out[f"norm.{mod}.{layer}"] = _mean(h_in.float().norm(dim=-1), mask)
            if "cosine" in readings:
                out[f"cos.{mod}.{layer}"] = _mean(_cos(h_in, h_out), mask)
            if "update" in readings:
                out[f"upd.{mod}.{layer}"] = _mean((h_out - h_in).float().norm(dim=-1), mask)
            if "contributions" in readings:
                an, mn = attn[layer].float().norm(dim=-1), mlp[layer].float().norm(dim=-1)
                out[f"share.{mod}.{layer}"] = _mean(an / (an + mn), mask)
        if "attention" in readings:
            w = weights[layer].float().mean(1)  # (b, q, k), heads averaged
            ind = torch.stack([masks["vision"], masks["text"]], -1).float()
            mass = w @ ind  # (b, q, 2)
            out[f"last.{layer}"] = mass[torch.arange(len(last)), last]
            for q, qm in masks.items():
                out[f"quad.{q}.{layer}"] = _mean(mass.transpose(1, 2), qm[:, None].expand(-1, 2, -1))
    if "pooled" in readings:
        for mod, mask in masks.items():
            w = mask.float()[..., None]
            out[f"pooled.{mod}"] = torch.stack([(h.float() * w).sum(1) / w.sum(1) for h in states], 1)
    return {k: v.cpu() for k, v in out.items()}


def reduce_tower(blocks) -> dict:
    """Per-block tower statistics (mean over all patches) from (input, output, attn, mlp) tuples."""
    out = {}
    for i, (h_in, h_out, a, m) in enumerate(blocks):
        an, mn = a.float().norm(dim=-1), m.float().norm(dim=-1)
        out[f"v.{i}"] = torch.stack(
            [_cos(h_in, h_out).mean(), (h_out - h_in).float().norm(dim=-1).mean(), (an / (an + mn)).mean()]
        ).cpu()
    return out


def _first(x):
    return x[0] if isinstance(x, tuple) else x


# ---------------------------------------------------------------- naive route


def naive_observe(lm_eager, samples, readings) -> None:
    """Batch 1, whole model eager, hidden states + attention weights returned, hooks for the rest."""
    readings = set(readings)
    model, family = lm_eager.model, lm_eager.family
    for s in samples:
        inputs = lm_eager.encode_samples([s])
        got, handles = {}, []
        if "contributions" in readings:
            for i in range(lm_eager.num_layers):
                for kind in ("attn", "mlp"):
                    handles.append(
                        family.site_module(model, kind, i).register_forward_hook(
                            lambda m, a, o, k=(kind, i): got.__setitem__(k, _first(o))
                        )
                    )
        if "vision_tower" in readings:
            for i, block in enumerate(model.get_submodule(family.vision_layers)):
                handles.append(
                    block.register_forward_pre_hook(
                        lambda m, a, kw, i=i: got.__setitem__(("vin", i), a[0] if a else kw["hidden_states"]),
                        with_kwargs=True,
                    )
                )
                handles.append(
                    block.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(("vout", i), _first(o)))
                )
                for kind in ("vision_attn", "vision_mlp"):
                    handles.append(
                        family.site_module(model, kind, i).register_forward_hook(
                            lambda m, a, o, k=(kind, i): got.__setitem__(k, _first(o))
                        )
                    )
        try:
            with torch.no_grad():
                out = model(**inputs, use_cache=False, output_hidden_states=True, output_attentions=True)
        finally:
            for h in handles:
                h.remove()
        masks = {"vision": lm_eager.vision_mask(inputs), "text": lm_eager.text_mask(inputs)}
        states = out.hidden_states
        L = lm_eager.num_layers
        reduce_decoder(
            states,
            [got.get(("attn", i)) for i in range(L)],
            [got.get(("mlp", i)) for i in range(L)],
            out.attentions,
            masks,
            readings,
            lm_eager.last_index(inputs),
        )
        if "vision_tower" in readings:
            reduce_tower(
                [
                    (got[("vin", i)], got[("vout", i)], got[("vision_attn", i)], got[("vision_mlp", i)])
                    for i in range(lm_eager.num_vision_layers)
                ]
            )


def naive_patching(lm, samples, patches) -> None:
    """Batch 1; for every configuration a clean rerun, then the patched run through every block, one
    configuration per pass."""
    for s in samples:
        inputs = lm.encode_samples([s])
        for p in patches:
            clean = run_clean(lm, inputs, [src for _, src in p.pairs])
            logits, _ = run_patched(lm, inputs, [p], clean, lean=False)
            torch.log_softmax(logits.float(), -1)


def naive_knockout(lm, samples, knockouts) -> None:
    """Batch 1; for every knockout a clean rerun, then the knocked pass through every block, the vision
    tower included, one knockout per pass."""
    for s in samples:
        for ko in knockouts:
            knockout_experiment(lm, [s], [ko], batch_size=1, max_rows=1, lean=False, reuse_vision=False)


# ---------------------------------------------------------------- nnsight route


def envoy(net, path: str):
    for part in path.split("."):
        net = net[int(part)] if part.isdigit() else getattr(net, part)
    return net


class NNsightRoute:
    """The same extraction written the way an nnsight user would, on the same (sdpa) model; an eager
    copy for attention weights."""

    def __init__(self, lm, lm_eager):
        import nnsight

        self.lm, self.lm_eager = lm, lm_eager
        self.net, self.net_eager = nnsight.NNsight(lm.model), nnsight.NNsight(lm_eager.model)
        names = {id(m): n for n, m in lm.model.named_modules()}
        self.path = lambda kind, layer: names[id(lm.family.site_module(lm.model, kind, layer))]

    def observe(self, samples, readings, batch_size) -> None:
        readings = set(readings)
        lm = self.lm
        L, V = lm.num_layers, lm.num_vision_layers
        for start in range(0, len(samples), batch_size):
            inputs = lm.encode_samples(samples[start : start + batch_size])
            eager = "attention" in readings
            net = self.net_eager if eager else self.net
            saved = {}
            with torch.no_grad(), net.trace(**inputs, use_cache=False):
                if "vision_tower" in readings:  # the tower runs first: sites in execution order
                    for i in range(V):
                        block = envoy(net, self.path("vision", i))
                        saved[("vin", i)] = block.input.save()
                        saved[("va", i)] = _first(envoy(net, self.path("vision_attn", i)).output).save()
                        saved[("vm", i)] = _first(envoy(net, self.path("vision_mlp", i)).output).save()
                        saved[("vout", i)] = _first(block.output).save()
                if readings - {"vision_tower"}:
                    for i in range(L):
                        block = envoy(net, self.path("resid", i))
                        if i == 0:
                            saved[("h", 0)] = block.input.save()
                        if eager:
                            saved[("w", i)] = envoy(net, self.path("attn_weights", i)).output[1].save()
                        if "contributions" in readings:
                            saved[("a", i)] = _first(envoy(net, self.path("attn", i)).output).save()
                            saved[("m", i)] = _first(envoy(net, self.path("mlp", i)).output).save()
                        saved[("h", i + 1)] = _first(block.output).save()
            masks = {"vision": lm.vision_mask(inputs), "text": lm.text_mask(inputs)}
            if readings - {"vision_tower"}:
                reduce_decoder(
                    [saved[("h", i)] for i in range(L + 1)],
                    [saved.get(("a", i)) for i in range(L)],
                    [saved.get(("m", i)) for i in range(L)],
                    [saved.get(("w", i)) for i in range(L)],
                    masks,
                    readings,
                    lm.last_index(inputs),
                )
            if "vision_tower" in readings:
                reduce_tower(
                    [
                        (saved[("vin", i)], saved[("vout", i)], saved[("va", i)], saved[("vm", i)])
                        for i in range(V)
                    ]
                )

    def pooled(self, prompt_sets, batch_size) -> None:
        lm, net, L = self.lm, self.net, self.lm.num_layers
        for samples in prompt_sets:
            for start in range(0, len(samples), batch_size):
                inputs = lm.encode_samples(samples[start : start + batch_size])
                states = []  # filled inside the trace (nnsight hands back saved values through outer objects)
                with torch.no_grad(), net.trace(**inputs, use_cache=False):
                    states.append(envoy(net, self.path("resid", 0)).input.save())
                    for i in range(L):
                        states.append(_first(envoy(net, self.path("resid", i)).output).save())
                masks = {"vision": lm.vision_mask(inputs), "text": lm.text_mask(inputs)}
                reduce_decoder(states, None, None, None, masks, {"pooled"}, None)

    def _order(self, inputs, sites):
        """Sites sorted by when their module runs (nnsight needs them in execution order)."""
        seen, handles = [], []
        modules = {s: self.lm.family.site_module(self.lm.model, *self._parse(s)) for s in sites}
        for s, m in modules.items():
            handles.append(m.register_forward_hook(lambda mod, a, o, s=s: seen.append(s)))
        try:
            with torch.no_grad():
                self.lm.forward_base(inputs)
        finally:
            for h in handles:
                h.remove()
        return [s for s in dict.fromkeys(seen)]

    @staticmethod
    def _parse(site):
        kind, _, layer = site.partition(".")
        return kind, int(layer)

    def patching(self, samples, patches, batch_size) -> None:
        lm, net = self.lm, self.net
        sources = list(dict.fromkeys(s for p in patches for _, s in p.pairs))
        order = None
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            inputs = lm.encode_samples(batch)
            if order is None:
                order = self._order(inputs, sources + [t for p in patches for t, _ in p.pairs])
            last = lm.last_index(inputs)
            keep = torch.unique(last)
            rows = torch.arange(len(batch))
            col = torch.searchsorted(keep, last)
            masks = {
                "vision": lm.vision_mask(inputs),
                "text": lm.text_mask(inputs),
                "all": inputs["attention_mask"].bool(),
            }
            saved, got = {}, {}
            with torch.no_grad(), net.trace(**inputs, use_cache=False, logits_to_keep=keep):
                for s in order:
                    if s in sources:
                        saved[s] = _first(envoy(net, self.path(*self._parse(s))).output).save()
                got["clean"] = net.output.logits.save()
            torch.log_softmax(got["clean"][rows, col].float(), -1)
            for p in patches:
                writes = dict(p.pairs)  # target -> source
                mask = None if p.kind.startswith("vision") else masks[p.positions]
                with torch.no_grad(), net.trace(**inputs, use_cache=False, logits_to_keep=keep):
                    for target in [s for s in order if s in writes]:
                        value = _first(envoy(net, self.path(*self._parse(target))).output)
                        src = saved[writes[target]]
                        if mask is None:
                            value[:] = src
                        else:
                            value[mask] = src[mask]
                    got["patched"] = net.output.logits.save()
                torch.log_softmax(got["patched"][rows, col].float(), -1)


# ---------------------------------------------------------------- FLOP floor


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def flop_floor(lm, samples, probe_sets, patch_lists, knockouts=()) -> dict:
    """Minimum FLOPs of the study's forward passes (multiply-add = 2 FLOPs), by part:

    - observation (chapters 1, 2, 4, 6 together): one pass of every sample through the vision tower
      and decoder blocks, no LM head: 2 x block weights x tokens + attention scores 4 x T^2 x width
      per layer (QK^T and AV, unmasked as fused kernels compute them);
    - probing (chapter 5): the same, once per distinct prompt its feature sets need;
    - patching (chapters 3, 7): the clean pass per sample plus, per configuration, the decoder from its
      first patched layer on (the tower from its first patched block on, then the whole decoder), each
      with the LM head at the final position only;
    - knockouts (chapter 8): the clean pass per sample plus, per distinct knockout, the decoder from its
      first knocked layer on with the LM head at the final position (the tower's output is the clean one).
    Embedding lookups and norms are left out (no matmul)."""
    family, model = lm.family, lm.model
    dec = [_params(b) for b in model.get_submodule(family.decoder_layers)]
    vis = [_params(b) for b in model.get_submodule(family.vision_layers)]
    proj = _params(model.get_submodule(family.projector))
    text_cfg = model.config.get_text_config()
    width_dec = text_cfg.num_attention_heads * getattr(
        text_cfg, "head_dim", text_cfg.hidden_size // text_cfg.num_attention_heads
    )
    head = text_cfg.vocab_size * text_cfg.hidden_size
    vcfg = model.config.vision_config
    width_vis = getattr(vcfg, "embed_dim", None) or vcfg.hidden_size  # Qwen2-VL's tower width is embed_dim

    def lengths(batch):
        inputs = lm.encode_samples(batch)
        tokens = inputs["attention_mask"].sum(1).tolist()
        grid = inputs.get("image_grid_thw")
        patches = (
            grid.prod(-1).tolist()
            if grid is not None
            else [int(lm.vision_mask(inputs)[0].sum())] * len(batch)
        )
        return list(zip(tokens, patches, lm.vision_mask(inputs).sum(1).tolist()))

    def tower(p, first=0):
        return sum(2 * w * p + 4 * p * p * width_vis for w in vis[first:])

    def decoder(t, first=0):
        return sum(2 * w * t + 4 * t * t * width_dec for w in dec[first:])

    def full(t, p, img):
        return tower(p) + 2 * proj * img + decoder(t)

    shapes = lengths(samples)
    out = {"observation": sum(full(*s) for s in shapes)}
    out["probing"] = sum(full(*s) for batch in probe_sets for s in lengths(batch))
    for name, patches in patch_lists.items():
        total = 0
        for t, p, img in shapes:
            total += full(t, p, img) + 2 * head
            for patch in patches:
                first = min(int(site.split(".")[1]) for site, _ in patch.pairs)
                if patch.kind.startswith("vision"):
                    total += tower(p, first) + 2 * proj * img + decoder(t) + 2 * head
                else:
                    total += decoder(t, first) + 2 * head
        out[name] = total
    firsts = [
        min(ko.layers, default=len(dec)) for ko in {(k.layers, k.queries): k for k in knockouts}.values()
    ]
    out["ch8"] = (
        sum(
            full(t, p, img) + 2 * head + sum(decoder(t, f) + 2 * head for f in firsts) for t, p, img in shapes
        )
        if knockouts
        else 0
    )
    return out


# ---------------------------------------------------------------- the chapters' work


def full_patched_runs(fn):
    """fn() with vlmlib.interventions.patching's patched runs computing every block (lean=False)."""
    import vlmlib.interventions.patching as patching

    lean = patching.run_patched
    patching.run_patched = lambda *a, **k: lean(*a, **{**k, "lean": False})
    try:
        return fn()
    finally:
        patching.run_patched = lean


def chapter3_patches(lm):
    plan = model_groups(lm, "attention", "auto")
    dirs = ["early->mid", "late->mid", "early->late", "mid->late", "early->final", "mid->final"]
    patches = attention_patches(plan, dirs, ["vision", "text"])
    patches += attention_patches(
        model_groups(lm, "attention", "auto", tower=True), dirs, ["all"], kind="vision_attn"
    )
    return check_patches(lm, patches)


def chapter7_patches(lm):
    sources = ["2-4", "5-7", "7-9", "10-12"]
    tower, decoder = front_groups(lm.num_vision_layers, "scaled"), front_groups(lm.num_layers, "scaled")
    # a shallow model's plan leaves some source groups out (vlmlib.paper.groups); the chapter skips them too
    patches = front_patches(tower, [s for s in sources if s in tower], "vision")
    for pos in ["text", "vision"]:
        patches += front_patches(decoder, [s for s in sources if s in decoder], "resid", pos)
    return check_patches(lm, patches)


def probe_prompt_sets(samples):
    from vlmlib.probing import caption_samples, category_pattern, deleted_caption_samples, probe_labels

    prompts = dict.fromkeys(PROMPT_OF[s] for s in DEFAULT_FEATURE_SETS)
    make = {
        "caption": lambda: caption_samples(samples),
        "caption_deleted": lambda: deleted_caption_samples(
            samples, category_pattern(set(probe_labels(samples)))
        ),
        "question": lambda: list(samples),
    }
    return [make[p]() for p in prompts]


def load_standin(
    name: str,
    structure: str,
    depths=None,
    implementation: str = "sdpa",
    device: str = "auto",
    dtype: str = "auto",
):
    """A random-weight stand-in (`vlmlib.organisms.builders.standin`, seed 0: always the same weights) as a
    loaded model; `depths` = (decoder, vision) layers for a slice of it. Shared with observe_overhead.py."""
    from vlmlib.models import resolve_device, resolve_dtype
    from vlmlib.organisms.builders import standin

    dev = resolve_device(device)
    net, processor = standin(name, structure, seed=0, depths=depths)
    net.set_attn_implementation(implementation)
    layers = "" if depths is None else f", {depths[0]} + {depths[1]} layers"
    return wrap_model(
        net,
        processor,
        f"{name} ({structure} structure{layers}, random)",
        False,
        "benchmark",
        dev,
        resolve_dtype(dtype, dev),
    )


def load_pair(name: str, device: str, dtype: str, structure: str, depths=None):
    """(lm with fused attention, lm with eager attention: the naive and nnsight-weights copy)."""
    if structure == "organism":
        return (
            load_model(name, device=device, dtype=dtype),
            load_model(name, device=device, dtype=dtype, attn_implementation="eager"),
        )
    return tuple(
        load_standin(name, structure, depths, implementation, device, dtype)
        for implementation in ("sdpa", "eager")
    )


def bench_model(name, args, structure) -> list[dict]:
    lm, lm_eager = load_pair(name, args.device, args.dtype, structure, args.depths)
    device = lm.device if isinstance(lm.device, torch.device) else torch.device(lm.device)
    samples = load_samples("shapes", args.n_samples, seed=0)
    probe = load_probe_samples("shapes", args.n_samples, seed=0)
    prompt_sets = probe_prompt_sets(probe)
    p3, p7 = chapter3_patches(lm), chapter7_patches(lm)
    sweep = [
        ko
        for queries in QUERY_SETS
        for ko in layer_sweep(lm.num_layers, queries, window=scaled_size(lm.num_layers))
    ]
    bs = args.batch_size
    encoded = [lm.encode_samples(samples[i : i + bs]) for i in range(0, len(samples), bs)]
    nn = NNsightRoute(lm, lm_eager) if not args.skip_nnsight else None

    def plain():
        with torch.no_grad():
            for inputs in encoded:
                lm.forward_base(inputs)

    def one_pass():
        for inputs in encoded:
            observe_batch(lm, inputs, BOOK_READINGS)

    ours = {
        f"ch{c}": (lambda r=r: observe(lm, samples, readings=r, batch_size=bs, progress=False))
        for c, r in CHAPTER_READINGS.items()
    }
    work = {
        "forward": plain,
        "observe (1 pass)": one_pass,
        **ours,
        "shared 1/2/4/6": lambda: observe(lm, samples, readings=BOOK_READINGS, batch_size=bs, progress=False),
        "ch5": lambda: pooled_features(lm, probe, batch_size=bs, progress=False),
        "ch3": lambda: patch_experiment(
            lm, samples, p3, batch_size=bs, conditions="auto", max_rows=args.max_rows
        ),
        "ch7": lambda: patch_experiment(lm, samples, p7, batch_size=bs, max_rows=args.max_rows),
        "ch8": lambda: knockout_experiment(lm, samples, sweep, batch_size=bs, max_rows=128),
    }
    # the same chapters with every patched run computed in full (lean off): what lean patching saves
    work["ch3 full"] = lambda: full_patched_runs(
        lambda: patch_experiment(lm, samples, p3, batch_size=bs, conditions="auto", max_rows=args.max_rows)
    )
    work["ch7 full"] = lambda: full_patched_runs(
        lambda: patch_experiment(lm, samples, p7, batch_size=bs, max_rows=args.max_rows)
    )
    if not args.skip_naive:
        ns = samples[: args.naive_samples]
        for c, r in CHAPTER_READINGS.items():
            work[f"naive ch{c}"] = lambda r=r: naive_observe(lm_eager, ns, r)
        work["naive ch5"] = lambda: [
            naive_observe(lm_eager, ps[: args.naive_samples], ("pooled",)) for ps in prompt_sets
        ]
        work["naive ch3"] = lambda: naive_patching(lm, ns, p3)
        work["naive ch7"] = lambda: naive_patching(lm, ns, p7)
        work["naive ch8"] = lambda: naive_knockout(lm, ns, sweep)
    if nn is not None:
        for c, r in CHAPTER_READINGS.items():
            work[f"nnsight ch{c}"] = lambda r=r: nn.observe(samples, r, bs)
        work["nnsight ch5"] = lambda: nn.pooled(prompt_sets, bs)
        work["nnsight ch3"] = lambda: nn.patching(samples, p3, bs)
        work["nnsight ch7"] = lambda: nn.patching(samples, p7, bs)
    result = measure(work, args.repeats, device)
    counts = {k: (args.naive_samples if k.startswith("naive") else len(samples)) for k in work}
    counts["ch5"] = counts["nnsight ch5"] = len(probe)
    if "naive ch5" in counts:
        counts["naive ch5"] = min(args.naive_samples, len(probe))
    floor = flop_floor(lm, samples, prompt_sets, {"ch3": p3, "ch7": p7}, sweep)
    rate = matmul_rate(device, next(lm.model.parameters()).dtype)
    return dict(
        model=lm.name,
        result=result,
        counts=counts,
        floor=floor,
        n_configs=(len(p3), len(p7), len(sweep)),
        n=len(samples),
        n_probe=len(probe),
        device=device,
        matmul_rate=rate,
    )


# ---------------------------------------------------------------- fixed costs of one chapter

FIXED_COST_SCRIPT = r"""
import json, sys, time, io
t = {}
s = time.perf_counter()
import torch, transformers, numpy, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from vlmlib.data import load_samples
from vlmlib.models import load_model
from vlmlib.observation import observe
from vlmlib.paper.figures import layer_lines, use_book_style
from vlmlib.paper.page import show_header
t["imports"] = time.perf_counter() - s
s = time.perf_counter()
lm = load_model(sys.argv[1], device="cpu", dtype="float32")
t["model load"] = time.perf_counter() - s
s = time.perf_counter()
samples = load_samples("shapes", int(sys.argv[2]), seed=0)
t["samples"] = time.perf_counter() - s
torch.set_num_threads(int(sys.argv[3]))
s = time.perf_counter()
obs = observe(lm, samples, readings=("cosine", "vision_tower"), batch_size=16, progress=False)
t["observe (chapter 1)"] = time.perf_counter() - s
s = time.perf_counter()
use_book_style()
fig, ax = layer_lines(obs, {"vision": "decoder.cosine.vision", "text": "decoder.cosine.text"}, band="sem")
fig.savefig(io.BytesIO(), format="png")
t["one figure"] = time.perf_counter() - s
print(json.dumps(t))
"""


def kernel_start_seconds() -> float | None:
    """Start a python3 Jupyter kernel, wait until it answers, shut it down (what the runner does once per
    kernel: per chapter with --kernel-per-chapter)."""
    import subprocess

    try:
        from jupyter_client.manager import start_new_kernel
    except ImportError:
        return None
    s = time.perf_counter()
    km, kc = start_new_kernel(kernel_name="python3", stderr=subprocess.DEVNULL)  # its log lines are not ours
    elapsed = time.perf_counter() - s
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    return elapsed


def fixed_costs(model: str, n_samples: int, threads: int, repeats: int) -> dict:
    """Median seconds of a chapter's fixed costs in a fresh interpreter, as a kernel pays them."""
    import json
    import subprocess

    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", FIXED_COST_SCRIPT, model, str(n_samples), str(threads)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        kernel = kernel_start_seconds()
        if kernel is not None:
            runs[-1]["kernel start"] = kernel
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


# ---------------------------------------------------------------- report


def _mib(b):
    return f"{max(b, 0) / 2**20:.1f}"


def report(run, args) -> str:
    r, counts = run["result"], run["counts"]
    sec = lambda k: r[k][0]  # noqa: E731
    rate = lambda k: counts[k] / r[k][0]  # noqa: E731 samples/s
    lines = [
        f"### {run['model']}",
        "",
        f"{run['n']} samples (chapter 5: {run['n_probe']}), batch {args.batch_size}; chapter 3 "
        f"{run['n_configs'][0]} and chapter 7 {run['n_configs'][1]} configurations, chapter 8 "
        f"{run['n_configs'][2]} knockouts; naive route on "
        f"{args.naive_samples} samples. Medians of {args.repeats}.",
        "",
        "| ch | ours /s | naive /s | nnsight /s | ours MiB | nnsight MiB |",
        "|---|---|---|---|---|---|",
    ]
    for ch in ("ch1", "ch2", "ch4", "ch6", "ch5", "ch3", "ch7", "ch8"):
        naive = f"{rate('naive ' + ch):.2f}" if f"naive {ch}" in r else "–"
        nns = f"{rate('nnsight ' + ch):.2f}" if f"nnsight {ch}" in r else "–"
        nns_mib = _mib(r[f"nnsight {ch}"][1]) if f"nnsight {ch}" in r else "–"
        lines.append(f"| {ch[2:]} | {rate(ch):.1f} | {naive} | {nns} | {_mib(r[ch][1])} | {nns_mib} |")
    lines += [
        "",
        "*/s*: samples per second (chapter 5: its samples through all three prompts); *MiB*: peak "
        "memory above the level before the call.",
    ]
    # whole book: per-sample seconds summed over chapters (each route at its own sample count); nnsight's
    # over the chapters it has (1-7), ours too where set beside it
    chapters = ("ch1", "ch2", "ch4", "ch6", "ch5", "ch3", "ch7", "ch8")
    without_8 = chapters[:-1]

    def per_sample(prefix, among=chapters):
        return sum(r[prefix + c][0] / counts[prefix + c] for c in among)

    def shared_pass(among=chapters):
        return (
            per_sample("", among)
            - sum(sec(c) / counts[c] for c in OBS_CHAPTERS)
            + sec("shared 1/2/4/6") / counts["shared 1/2/4/6"]
        )

    book, shared = per_sample(""), shared_pass()
    lines += [
        "",
        "| ratio | value |",
        "|---|---|",
        f"| observation pass / plain forward | {sec('observe (1 pass)') / sec('forward'):.2f} |",
        f"| four observation chapters, a pass each / one shared pass | "
        f"{sum(sec(c) for c in OBS_CHAPTERS) / sec('shared 1/2/4/6'):.2f} |",
        f"| chapter 3, full patched runs / lean | {sec('ch3 full') / sec('ch3'):.2f} |",
        f"| chapter 7, full patched runs / lean | {sec('ch7 full') / sec('ch7'):.2f} |",
    ]
    # (chapter 8's lean / full: benchmarks/knockout_lean.py)
    if "naive ch1" in r:
        lines.append(f"| naive / ours, whole book (a pass per chapter) | {per_sample('naive ') / book:.1f} |")
        lines.append(f"| naive / ours, whole book (shared pass) | {per_sample('naive ') / shared:.1f} |")
        lines.append(
            f"| naive / ours, chapters 1-7 (shared pass) | "
            f"{per_sample('naive ', without_8) / shared_pass(without_8):.1f} |"
        )
    if "nnsight ch1" in r:
        nns = per_sample("nnsight ", without_8)
        lines.append(
            f"| nnsight / ours, chapters 1-7 (a pass per chapter) | {nns / per_sample('', without_8):.2f} |"
        )
        lines.append(f"| nnsight / ours, chapters 1-7 (shared pass) | {nns / shared_pass(without_8):.2f} |")
    floor = run["floor"]
    total_floor = sum(floor.values())
    ours_s = shared * run["n"]
    lines += [
        "",
        f"FLOP floor for this work ({run['n']} samples): observation {floor['observation'] / 1e9:.2f} GFLOP, "
        f"probing {floor['probing'] / 1e9:.2f}, patching ch3 {floor['ch3'] / 1e9:.2f}, "
        f"ch7 {floor['ch7'] / 1e9:.2f}, knockout ch8 {floor['ch8'] / 1e9:.2f}; "
        f"total {total_floor / 1e9:.2f} GFLOP. Our whole-book compute (shared pass, scaled to "
        f"{run['n']} samples) {ours_s:.2f} s = {total_floor / ours_s / 1e9:.1f} GFLOP/s achieved.",
    ]
    rate, n = run["matmul_rate"]
    lines += [
        "",
        f"One dense {n} x {n} matmul on this device reaches {rate / 1e9:.1f} GFLOP/s: at that rate the "
        f"floor's work takes {total_floor / rate:.2f} s, and our whole-book compute takes "
        f"{ours_s * rate / total_floor:.2f} x that.",
    ]
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads, {gpu}; load average at start {load:.1f}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--models", nargs="+", default=None, help="organism names (default both) or stand-in names"
    )
    ap.add_argument(
        "--n-samples", type=int, default=None, help="default 24 (organisms), 200 (--full-structure)"
    )
    ap.add_argument(
        "--naive-samples", type=int, default=None, help="samples for the naive route (default: all)"
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-rows", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument(
        "--full-structure",
        action="store_true",
        help="random-weight models of the full PaliGemma-3B-448 and Qwen2-VL-2B configurations (a GPU)",
    )
    ap.add_argument(
        "--standin-size",
        default=None,
        choices=["tiny", "full"],
        help="stand-in structure instead of the organisms ('tiny': a CPU check of the --full-structure path)",
    )
    ap.add_argument(
        "--depths",
        nargs=2,
        type=int,
        default=None,
        metavar=("DECODER", "VISION"),
        help="with a stand-in structure: a slice of it, these many decoder and vision layers "
        "(the real width on a CPU)",
    )
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-nnsight", action="store_true")
    ap.add_argument(
        "--fixed-costs",
        action="store_true",
        help="only time a chapter's fixed costs (kernel start, imports, model load, samples, a figure)",
    )
    args = ap.parse_args(argv)
    structure = "full" if args.full_structure else (args.standin_size or "organism")
    if args.depths and structure == "organism":
        ap.error("--depths slices a stand-in: give --standin-size full (or tiny) or --full-structure")
    if structure == "full":
        if not torch.cuda.is_available() and not args.depths:
            ap.error(
                "--full-structure builds 2-3 billion-parameter models: run it on a GPU (or a slice: --depths)"
            )
        if args.dtype == "auto":  # the hub's weights are bf16; a CPU slice runs float32, as the organisms
            args.dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    if args.models is None:
        args.models = (
            ["paligemma-shapes", "qwen2vl-shapes"]
            if structure == "organism"
            else ["paligemma-3b-448", "qwen2vl-2b"]
        )
    args.n_samples = args.n_samples or (200 if structure == "full" else 24)
    args.naive_samples = min(args.naive_samples or args.n_samples, args.n_samples)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would land in the table pasted on a page
    print(f"Machine: {machine()}\n")
    print(f"Command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
    if args.fixed_costs:
        for name in args.models:
            costs = fixed_costs(name, args.n_samples, torch.get_num_threads(), args.repeats)
            print(
                f"### Fixed costs of one chapter, {name} ({args.n_samples} samples), "
                f"medians of {args.repeats}\n"
            )
            print("| step | seconds |\n|---|---|")
            for step, seconds in costs.items():
                print(f"| {step} | {seconds:.2f} |")
            print()
        return 0
    for name in args.models:
        run = bench_model(name, args, structure)
        print(report(run, args), "\n", flush=True)
        del run
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
