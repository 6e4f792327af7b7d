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
# # 1. Vision representations across layers
#
# *Paper section 2.1, Figure 1; metric: Appendix F.1 (eq. 1-2).*
#
# **Question.** Does the language decoder rewrite the image tokens layer after layer, or does it carry
# them forward nearly unchanged until late layers?
#
# **Method.** Every decoder layer $l$ reads the residual stream $H^{(l-1)}$ and writes $H^{(l)}$. For each
# token $t$ we compare its state before and after a layer with the cosine similarity
#
# $$\text{CosSim}(t, l) = \frac{H_t^{(l)} \cdot H_t^{(l+1)}}{\|H_t^{(l)}\|\,\|H_t^{(l+1)}\|},$$
#
# average it over the vision tokens of a sample, then over samples ($\text{AvgSim}^{(l)}$). A value near
# 1 means the layer barely turned the token's direction; a drop means the layer transformed it. We do
# the same for the text tokens, which the paper does not show, as a reference.
#
# We read $H^{(0)}$ (the decoder's input, image features already merged in) and each layer's raw output
# in one observation pass (`vlmlib.observe`, shared with chapters 2, 4 and 6), which reduces them to
# per-sample means on the fly. We never use the final-norm output that transformers returns as its last
# hidden state: a norm is not a layer's update. Layers are counted from 0: layer $i$ is the module
# `layers[i]`, and its point compares its input $H^{(i)}$ with its output $H^{(i+1)}$. The vision tower's
# own layers are read the same way at the end.
#
# **Paper's finding (PaliGemma-3B, 100 PixelProse images).** Similarity stays high in layers 1-10 and
# drops in layers 11-18 (counted from 1 in the paper's text: modules 0-9 and 10-17).

# %% tags=["parameters"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 16
batch_size = 8
device = "auto"
dtype = "auto"
seed = 0
results = "01_representations.json"  # where this chapter writes its numbers
band = "sem"  # spread drawn around each mean: "sem" (standard error) or "std" (across samples)

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from vlmlib.data import load_samples
from vlmlib.models import load_model
from vlmlib.observe import observe
from vlmlib.plots import layer_lines
from vlmlib.report import model_banner, paper_values, run_info, write_results

lm = load_model(model, device=device, dtype=dtype)
samples = load_samples(dataset, n_samples, seed=seed)
paper = paper_values("section_2_1_representations").get(lm.family.name, {})
display(Markdown(model_banner(lm)))
print(f"{len(samples)} samples from {dataset!r}; first question: {samples[0].question!r}")

# %% [markdown]
# ## Similarity of consecutive layers

# %%
obs = observe(lm, samples, readings=("cosine", "vision_tower"), batch_size=batch_size)

fig, ax = layer_lines(obs, {"vision": "decoder.cosine.vision", "text": "decoder.cosine.text"}, band=band)
ax.set_xlabel("decoder layer i (module layers[i])")
ax.set_ylabel("AvgSim: cos(H$^{(i)}$, H$^{(i+1)}$)")
ax.set_title(f"Consecutive-layer cosine similarity ({lm.name})")
fig.tight_layout()
plt.show()

# %% [markdown]
# The band is one standard error of the mean across samples (`band="std"`: the spread across
# samples); the paper gives no spread.
#
# ## Beside the paper

# %%
vision_mean = obs.mean("decoder.cosine.vision")
L = lm.num_layers
split = max(1, min(L - 1, round(10 * L / 18)))  # the paper's boundary between layers 1-10 and 11-18, scaled
ours = {"early_mean": float(vision_mean[:split].mean()), "late_mean": float(vision_mean[split:].mean()),
        "split_layer": split, "lowest_layer": int(vision_mean.argmin()), "lowest": float(vision_mean.min())}
display(Markdown("\n".join([
    "| | paper (PaliGemma-3B) | ours |", "|---|---|---|",
    f"| in words | {paper.get('words', '-')} | layers 0-{split - 1}: {ours['early_mean']:.3f}; "
    f"layers {split}-{L - 1}: {ours['late_mean']:.3f}; lowest at layer {ours['lowest_layer']} ({ours['lowest']:.3f}) |",
])))

# %% [markdown]
# ## The vision tower's own layers

# %%
fig, ax = layer_lines(obs, {"all": "vision_tower.cosine.all"}, band=band)
ax.set(xlabel="vision-tower layer", ylabel="AvgSim over patches", title=f"{lm.name}: inside the vision tower")
ax.get_legend().remove()
fig.tight_layout()
plt.show()

# %%
print(f"What this run shows: vision tokens keep a mean similarity of {ours['early_mean']:.3f} across "
      f"consecutive layers 0-{split - 1} and {ours['late_mean']:.3f} in layers {split}-{L - 1}; the layer "
      f"that changes them most is layer {ours['lowest_layer']} of 0-{L - 1} (AvgSim {ours['lowest']:.3f}).")

# %%
write_results(results, {
    **run_info(lm, dataset=dataset, n_samples=len(samples), batch_size=batch_size, seed=seed),
    "chapter": "01_representations",
    "layers": list(range(L)),
    "layer_note": "layer i is the module layers[i] (0-based); AvgSim compares H^(i) with H^(i+1)",
    "avg_sim": {m: {"mean": obs.mean(f"decoder.cosine.{m}"), "sem": obs.sem(f"decoder.cosine.{m}"),
                    "std": obs.std(f"decoder.cosine.{m}")} for m in ("vision", "text")},
    "vision_tower": obs.summary("vision_tower.cosine."),
    "summary": ours,
    "paper": paper,
})
