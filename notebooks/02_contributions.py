# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Attention vs MLP contributions to the residual stream
#
# *Paper Appendix B, Figures 5-8; metrics: Appendix F.2 (eq. 3-5, 7).*
#
# **Question.** When a decoder layer changes a token, is it attention (mixing in other tokens) or the
# MLP (transforming the token on its own) that does the work, and does that differ between vision and
# text tokens?
#
# **Method.** A pre-norm decoder layer $l$ updates the residual stream in two additions,
#
# $$H^{(l)} = H^{(l-1)} + \Delta_{\text{Attn}}^{(l)} + \Delta_{\text{MLP}}^{(l)},$$
#
# and we read each addition exactly as it is added (for Gemma-2-style blocks that is after the
# post-sublayer norm), so the identity holds to float tolerance; the engine checks it on every batch.
# For every token we take the L2 norms $\|\Delta_{\text{Attn},t}\|$ and $\|\Delta_{\text{MLP},t}\|$ and
# attention's relative share
#
# $$\text{Contrib}_{\text{Attn},t}^{(l)} = \frac{\|\Delta_{\text{Attn},t}^{(l)}\|}{\|\Delta_{\text{Attn},t}^{(l)}\| + \|\Delta_{\text{MLP},t}^{(l)}\|},$$
#
# average each over the vision tokens (or the text tokens) of a sample, then over samples. Eq. 7 leaves
# open whether the ratio is taken per token or between averaged norms; we report the per-token share
# and print the ratio of the averaged norms beside it. All of it comes from one unchanged forward pass
# (`vlmlib.observe`), which also reads the vision tower's own layers the same way.
#
# Layers are counted from 0: layer $i$ is the module `layers[i]`, writing $H^{(i+1)}$.
#
# **Paper's finding.** PaliGemma: attention and MLP contribute roughly equally (attention 40-60%) in
# most layers, for vision and text tokens; the MLP spikes at the final layer (over 80%, L2 norm from
# about 100 to 400). Qwen2-VL: attention dominates (about 60-70% for text) until the late layers, where
# the MLP spikes.

# %% tags=["parameters"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 16
batch_size = 8
device = "auto"
dtype = "auto"
seed = 0
results = "02_contributions.json"  # where this chapter writes its numbers
band = "sem"  # spread drawn around each mean: "sem" (standard error) or "std" (across samples)

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from vlmlib.data import load_samples
from vlmlib.models import load_model
from vlmlib.observe import observe
from vlmlib.plots import contributions_figure
from vlmlib.report import model_banner, paper_values, run_info, write_results

lm = load_model(model, device=device, dtype=dtype)
samples = load_samples(dataset, n_samples, seed=seed)
paper = paper_values("appendix_b_contributions").get(lm.family.name, {})
display(Markdown(model_banner(lm)))
print(f"{len(samples)} samples from {dataset!r}; first question: {samples[0].question!r}")

# %% [markdown]
# ## One observation pass
#
# The engine hooks every decoder layer (its input, its attention and MLP contributions, its output)
# and every vision-tower layer, reduces each to per-sample means on the fly, and adds them to running
# sums. Attention weights are not needed here, so attention runs with the model's fused kernel.

# %%
obs = observe(lm, samples, readings=("contributions", "update", "vision_tower"), batch_size=batch_size)
print(f"residual identity H(l) = H(l-1) + attn + mlp: max |error| {obs.maxima['decoder.identity_error']:.2e} "
      f"(largest |H| entry {obs.maxima['decoder.max_abs_state']:.2e}); vision tower "
      f"{obs.maxima['vision_tower.identity_error']:.2e}")

# %% [markdown]
# ## Vision tokens (Figures 5 and 7)

# %%
fig = contributions_figure(obs, "vision", title=f"{lm.name}: contributions to vision tokens", band=band)
plt.show()

# %% [markdown]
# ## Text tokens (Figures 6 and 8)

# %%
fig = contributions_figure(obs, "text", title=f"{lm.name}: contributions to text tokens", band=band)
plt.show()

# %% [markdown]
# Bands and error bars: one standard error of the mean across samples (`band="std"` draws the spread
# across samples instead); the paper gives no spread.
#
# ## Beside the paper
#
# The paper states its results as ranges in words; we put our numbers next to them. "Most layers"
# is read as all layers but the last.

# %%
def describe(modality):
    share = obs.mean(f"decoder.attn_share.{modality}")
    mlp = obs.mean(f"decoder.mlp_norm.{modality}")
    return {
        "attn_share_range_most_layers": [float(share[:-1].min()), float(share[:-1].max())],
        "mlp_share_final_layer": float(1 - share[-1]),
        "mlp_norm_before_final_max": float(mlp[:-1].max()),
        "mlp_norm_final_layer": float(mlp[-1]),
        "mlp_peak_layer": int(mlp.argmax()),
        "attn_dominant_layers": [int(i) for i in np.flatnonzero(share > 0.5)],
    }


ours = {m: describe(m) for m in ("vision", "text")}
rows = ["| tokens | | paper | ours |", "|---|---|---|---|"]
for m in ("vision", "text"):
    p, o = paper.get(m, {}), ours[m]
    lo, hi = o["attn_share_range_most_layers"]
    ref = p.get("attn_share_most_layers") or p.get("attn_share_until_late_layers")
    rows.append(f"| {m} | attention share, layers 0..L-2 | {f'{ref[0]:.0%}-{ref[1]:.0%}' if ref else '-'} "
                f"| {lo:.0%}-{hi:.0%} |")
    rows.append(f"| {m} | MLP share, final layer | {'>' + format(p['mlp_share_final_layer_min'], '.0%') if 'mlp_share_final_layer_min' in p else '-'} "
                f"| {o['mlp_share_final_layer']:.0%} |")
    rows.append(f"| {m} | MLP norm: max before final -> final | "
                f"{str(p.get('mlp_norm_before_final', p.get('mlp_norm_layer_7', '-'))) + ' -> ' + str(p['mlp_norm_final_layer']) if 'mlp_norm_final_layer' in p else '-'} "
                f"| {o['mlp_norm_before_final_max']:.3g} -> {o['mlp_norm_final_layer']:.3g} |")
    rows.append(f"| {m} | in words | {p.get('words', '-')} | MLP largest at layer {o['mlp_peak_layer']}; "
                f"attention > MLP in {len(o['attn_dominant_layers'])} of {lm.num_layers} layers |")
display(Markdown("\n".join(rows)))
ratio = {m: obs.ratio_of_means(m) for m in ("vision", "text")}
print("eq. 7 as a ratio of averaged norms (vision):", np.round(ratio["vision"], 3))

# %% [markdown]
# ## The vision tower's own layers
#
# The same decomposition inside the vision encoder (all its patches; there is no text there).

# %%
fig = contributions_figure(obs, "all", prefix="vision_tower", band=band,
                           title=f"{lm.name}: contributions inside the vision tower")
plt.show()

# %%
v, t = ours["vision"], ours["text"]
print(f"What this run shows: attention's share of the update ranges {v['attn_share_range_most_layers'][0]:.0%}-"
      f"{v['attn_share_range_most_layers'][1]:.0%} for vision tokens and {t['attn_share_range_most_layers'][0]:.0%}-"
      f"{t['attn_share_range_most_layers'][1]:.0%} for text tokens before the last layer; at the last layer the MLP "
      f"carries {v['mlp_share_final_layer']:.0%} (vision) and {t['mlp_share_final_layer']:.0%} (text) of it. "
      f"The MLP's largest contribution is at layer {v['mlp_peak_layer']} for vision and {t['mlp_peak_layer']} for text tokens.")

# %%
write_results(results, {
    **run_info(lm, dataset=dataset, n_samples=len(samples), batch_size=batch_size, seed=seed),
    "chapter": "02_contributions",
    "layers": list(range(lm.num_layers)),
    "layer_note": "layer i is the module layers[i] (0-based), writing H^(i+1)",
    "decoder": obs.summary("decoder."),
    "vision_tower": obs.summary("vision_tower."),
    "ratio_of_means": ratio,
    "identity_error": obs.maxima,
    "summary": ours,
    "paper": paper,
})
