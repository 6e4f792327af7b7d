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
# with `vlmlib.trace.Trace`. We never use the final-norm output that transformers returns as its last
# hidden state: a norm is not a layer's update.
#
# **Paper's finding (PaliGemma-3B, 100 PixelProse images).** Similarity stays high in layers 1-10 and
# drops in layers 11-18.

# %% tags=["parameters"]
model = "paligemma-random"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 16
batch_size = 8
device = "auto"
dtype = "auto"
seed = 0
results = "01_representations.json"  # where this chapter writes its numbers

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from vlmlib.data import load_samples
from vlmlib.models import load_model
from vlmlib.report import model_banner, run_info, write_results
from vlmlib.representations import consecutive_layer_similarity, mean_and_sem

lm = load_model(model, device=device, dtype=dtype)
samples = load_samples(dataset, n_samples, seed=seed)
display(Markdown(model_banner(lm)))
print(f"{len(samples)} samples from {dataset!r}; first question: {samples[0].question!r}")

# %% [markdown]
# ## Similarity of consecutive layers

# %%
per_sample = consecutive_layer_similarity(lm, samples, batch_size=batch_size)
summary = {m: mean_and_sem(v) for m, v in per_sample.items()}

layers = range(1, lm.num_layers + 1)  # layer l compares H^(l-1) with H^(l)
fig, ax = plt.subplots(figsize=(6, 3.5))
for modality, colour in (("vision", "tab:blue"), ("text", "tab:orange")):
    mean, sem = summary[modality]
    ax.plot(layers, mean, marker="o", color=colour, label=f"{modality} tokens")
    ax.fill_between(layers, mean - sem, mean + sem, color=colour, alpha=0.2)
ax.set_xlabel("decoder layer l")
ax.set_ylabel("AvgSim: cos(H$^{(l-1)}$, H$^{(l)}$)")
ax.set_title(f"Consecutive-layer cosine similarity ({lm.name})")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The band is one standard error of the mean across samples (the paper gives no spread).

# %%
vision_mean, _ = summary["vision"]
lowest = int(vision_mean.argmin()) + 1
print(f"Vision tokens: mean similarity {vision_mean.mean():.3f}; the layer that changes them most is "
      f"layer {lowest} of {lm.num_layers} (AvgSim {vision_mean.min():.3f}).")

# %%
write_results(results, {
    **run_info(lm, dataset=dataset, n_samples=len(samples), batch_size=batch_size, seed=seed),
    "chapter": "01_representations",
    "layers": list(layers),
    "avg_sim": {m: {"mean": summary[m][0], "sem": summary[m][1]} for m in summary},
})
