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
# # 6. Residual stream update
#
# *Paper section 2.5, Figure 4; metric: Appendix F.2 (eq. 6).*
#
# **Question.** How much does each layer change the vision tokens it carries, in absolute terms?
#
# **Method.** Chapter 1 measured how much a layer turns a token's direction; here we measure how far it
# moves it. For the tokens of a modality $S$ (vision or text) the update of layer $l$ is
#
# $$\text{Update}_S^{(l)} = \frac{1}{|S|} \sum_{t \in S} \big\|H_t^{(l)} - H_t^{(l-1)}\big\|_2,$$
#
# averaged over samples, with $H^{(0)}$ the decoder input and each $H^{(l)}$ a layer's raw output (never
# the final-norm output). By the residual identity (chapter 2) the update is exactly
# $\Delta_{\text{Attn}}^{(l)} + \Delta_{\text{MLP}}^{(l)}$. Because an update is only large or small against the size of the
# stream it changes, we also show it relative to the mean norm of the tokens it acts on,
# $\text{Update}_S^{(l)} / \overline{\|H^{(l-1)}\|}_S$. The same reading of the vision tower's own layers is at the end.
#
# Layers are counted from 0, as in the paper's Figure 4: layer $i$ is the module `layers[i]`, writing
# $H^{(i+1)}$ from $H^{(i)}$.
#
# **Paper's finding (PaliGemma-3B, vision tokens).** High initial processing at layer 0, a drop for
# layers 1-10, and spikes in the final layers 15-17.

# %% tags=["parameters"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 16
batch_size = 8
device = "auto"
dtype = "auto"
seed = 0
results = "06_residual_update.json"  # where this chapter writes its numbers
band = "sem"  # spread drawn around each mean: "sem" (standard error) or "std" (across samples)

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from vlmlib.data import load_samples
from vlmlib.models import load_model
from vlmlib.observe import observe
from vlmlib.plots import layer_lines, update_figure
from vlmlib.report import model_banner, paper_values, run_info, write_results

lm = load_model(model, device=device, dtype=dtype)
samples = load_samples(dataset, n_samples, seed=seed)
paper = paper_values("section_2_5_update").get(lm.family.name, {})
display(Markdown(model_banner(lm)))
print(f"{len(samples)} samples from {dataset!r}; first question: {samples[0].question!r}")

# %% [markdown]
# ## One observation pass

# %%
obs = observe(lm, samples, readings=("update", "vision_tower"), batch_size=batch_size)

# %% [markdown]
# ## Update per layer (Figure 4)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
update_figure(obs, ax=axes[0], band=band, title=f"{lm.name}: absolute update")
relative = {m: obs.mean(f"decoder.update.{m}") / obs.mean(f"decoder.norm.{m}")[:-1] for m in ("vision", "text")}
for m, values in relative.items():
    axes[1].plot(range(lm.num_layers), values, marker="o", ms=3, label=m)
axes[1].set(xlabel="layer", ylabel="update / mean ||H$^{(i)}$||", title="relative to the stream's size")
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Bands: one standard error of the mean across samples (the paper gives no spread).
#
# ## Beside the paper
#
# The paper describes Figure 4 in words; we describe our curve the same way: the layers where the
# update is highest and lowest, and how the first layer and the last three compare to the middle.

# %%
vision = obs.mean("decoder.update.vision")
L = lm.num_layers
k = max(1, round(3 * L / 18))
middle = vision[1:L - k].mean() if L - k > 1 else float("nan")
ours = {
    "first_layer": float(vision[0]),
    "middle_mean": float(middle),
    "final_layers_mean": float(vision[L - k:].mean()),
    "final_layers": list(range(L - k, L)),
    "lowest_layer": int(vision.argmin()),
    "highest_layer": int(vision.argmax()),
}
display(Markdown("\n".join([
    "| | paper (PaliGemma-3B) | ours |", "|---|---|---|",
    f"| in words | {paper.get('words', '-')} | first layer {ours['first_layer']:.3g}, middle layers "
    f"{ours['middle_mean']:.3g}, final layers {ours['final_layers']} {ours['final_layers_mean']:.3g}; "
    f"highest at layer {ours['highest_layer']}, lowest at layer {ours['lowest_layer']} |",
])))

# %% [markdown]
# ## The vision tower's own layers

# %%
fig, ax = layer_lines(obs, {"all": "vision_tower.update.all"}, band=band)
ax.set(xlabel="vision-tower layer", ylabel="mean ||update||", title=f"{lm.name}: update inside the vision tower")
ax.get_legend().remove()
fig.tight_layout()
plt.show()

# %%
print(f"What this run shows: vision tokens move by {ours['first_layer']:.3g} at layer 0, {ours['middle_mean']:.3g} "
      f"on average in the middle layers and {ours['final_layers_mean']:.3g} in the final layers "
      f"{ours['final_layers']}; the largest update is at layer {ours['highest_layer']}, the smallest at layer "
      f"{ours['lowest_layer']}. Relative to the stream's size, updates range "
      f"{relative['vision'].min():.2f}-{relative['vision'].max():.2f}.")

# %%
write_results(results, {
    **run_info(lm, dataset=dataset, n_samples=len(samples), batch_size=batch_size, seed=seed),
    "chapter": "06_residual_update",
    "layers": list(range(lm.num_layers)),
    "layer_note": "layer i is the module layers[i] (0-based), writing H^(i+1) from H^(i)",
    "update": obs.summary("decoder.update."),
    "norm": obs.summary("decoder.norm."),
    "relative_update": relative,
    "vision_tower": obs.summary("vision_tower.update."),
    "summary": ours,
    "paper": paper,
})
