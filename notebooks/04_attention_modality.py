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
# # 4. Attention by modality per layer
#
# *Paper section 2.3 and Figure 2; Appendix C, Figures 9-10; metrics: Appendix F.3 (eq. 8-9).*
#
# **Question.** Where does the token that produces the answer look, layer by layer: at the image or at
# the text? And do vision and text tokens attend within their own modality or across?
#
# **Method.** At layer $l$ the final token's attention weights, averaged over heads,
#
# $$A_{\text{last},j}^{(l)} = \frac{1}{N_{\text{heads}}} \sum_h \operatorname{softmax}\Big(\frac{Q_{\text{last}}^{(l,h)} K_j^{(l,h)\top}}{\sqrt{d_k}}\Big),$$
#
# are summed over the vision keys and over the text keys:
# $\text{Attn}_{\text{vision}}^{(l)} = \sum_{j \in I_{\text{vis}}} A_{\text{last},j}^{(l)}$ and likewise for text (the two add
# up to 1; padding is never a key). Averaged over samples, this is Figure 2.
#
# Appendix C splits the whole attention matrix into four blocks by query and key modality
# (V→V, V→T, T→V, T→T) and reports the **mean weight** in each block at one intermediate layer. A block
# mean is small when the block is large (1024 image keys share the mass in PaliGemma-3B) and it counts
# causally masked entries as the zeros they are, so we also report the **mass** per block: the mean over
# queries of the block of their total weight on the block's keys (V→V + V→T = 1).
#
# **How we read the weights without slowing the pass.** Neither number needs the $T \times T$ matrix:
# a query's mass on vision keys is $\operatorname{softmax}(q K^\top/\sqrt{d_k} + \text{mask}) \cdot \mathbf{1}_{\text{vis}}$, which is
# attention with the modality indicators as values. The engine runs the model's fused attention for
# the output, plus one fused call with the two indicator columns (zero-padded to the head size) as
# values, at every layer. `benchmarks/observe_attention.py` measured it on CPU (tiny PaliGemma, batch
# of 4, 793 tokens, medians of 9 interleaved repeats): the pass without attention readings took 0.74 s,
# with fused masses 1.19 s, with the decoder switched to eager attention 2.25 s, with the whole model
# eager 2.37 s; at 33-213 tokens all four are within 20% of each other. The fused call also never
# holds a (T, T) matrix. The tests check every number against transformers' eager `output_attentions`. Only the picture of one sample's full pattern
# below uses eager attention, for one pass.
#
# Layers are counted from 0: layer $i$ is the module `layers[i]`. PaliGemma's prompt (image and
# question) is a bidirectional prefix (its prefix-LM mask is in effect), so image tokens can attend to
# the question; Qwen2-VL is causal, so image tokens can only see the text before the image.
#
# **Paper's finding (PaliGemma-3B).** The final token relies on text in most layers; its attention to
# vision rises only in the final layers. Queries attend mostly within their own modality in
# intermediate layers (Appendix C).

# %% tags=["parameters"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 16
batch_size = 8
device = "auto"
dtype = "auto"
seed = 0
results = "04_attention_modality.json"  # where this chapter writes its numbers
quadrant_layer = None  # layer of the Appendix C quadrants; None: the paper's layer 10, scaled to the depth
band = "sem"  # spread drawn around each mean: "sem" (standard error) or "std" (across samples)

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from vlmlib.data import load_samples
from vlmlib.models import load_model
from vlmlib.observe import QUADRANTS, attention_pattern, observe
from vlmlib.plots import layer_lines, modality_attention_figure, pattern_heatmap, quadrant_heatmap, quadrant_matrix
from vlmlib.report import model_banner, paper_values, run_info, write_results

lm = load_model(model, device=device, dtype=dtype)
samples = load_samples(dataset, n_samples, seed=seed)
paper_quadrants = paper_values("appendix_c_quadrants")
paper_words = paper_values("section_2_3_attention").get(lm.family.name, {}).get("words", "")
if quadrant_layer is None:
    quadrant_layer = min(lm.num_layers - 1, int(np.floor(paper_quadrants["layer"] * lm.num_layers / 18 + 0.5)))
if not 0 <= quadrant_layer < lm.num_layers:
    raise ValueError(f"quadrant_layer {quadrant_layer} is outside the decoder (layers 0..{lm.num_layers - 1})")
display(Markdown(model_banner(lm)))
print(f"{len(samples)} samples from {dataset!r}; quadrant layer {quadrant_layer} "
      f"(the paper's layer {paper_quadrants['layer']} of 18, scaled to {lm.num_layers} layers)")

# %% [markdown]
# ## One observation pass

# %%
obs = observe(lm, samples, readings=("attention",), batch_size=batch_size)

# %% [markdown]
# ## The final token's attention by modality (Figure 2)

# %%
fig = modality_attention_figure(obs, title=f"{lm.name}: final-token attention by key modality", band=band)
plt.show()
vision_mass = obs.mean("decoder.last_attn.vision")
print("mass on vision keys per layer:", np.round(vision_mass, 3))
print("paper (PaliGemma-3B, Figure 2):", paper_words)

# %% [markdown]
# Bands: one standard error of the mean across samples. For reference, the share of the prompt that
# is image tokens is what a final token attending uniformly would give to vision:

# %%
inputs = lm.encode_samples(samples[:1])
n_vis, n_real = int(lm.vision_mask(inputs)[0].sum()), int(inputs["attention_mask"][0].sum())
print(f"{n_vis} of {n_real} prompt tokens are image tokens ({n_vis / n_real:.0%})")

# %% [markdown]
# ## Query/key modality quadrants at every layer

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
names = {"V→V": "vv", "V→T": "vt", "T→V": "tv", "T→T": "tt"}
layer_lines(obs, {k: f"decoder.quadrant.{q}" for k, q in names.items()}, ax=axes[0], band=band)
axes[0].set(xlabel="layer", ylabel="mean attention weight in block", yscale="log", title="block mean (Appendix C)")
layer_lines(obs, {k: f"decoder.quadrant_mass.{q}" for k, q in names.items()}, ax=axes[1], band=band)
axes[1].set(xlabel="layer", ylabel="mass on key modality", ylim=(-0.02, 1.02), title="block mass per query")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Appendix C at one layer, beside the paper (Figures 9-10)
#
# Left: one sample's head-averaged attention at the quadrant layer, tokens reordered vision first
# (rows are queries); middle: our block means across samples; right: the paper's block means for the
# same family (PaliGemma-3B or Qwen2-VL-2B, with 1024 / a few hundred image tokens, so compare the
# pattern between blocks rather than the magnitudes).

# %%
pattern = attention_pattern(lm, inputs, quadrant_layer)
is_vision = lm.vision_mask(inputs)[0, :n_real].cpu().numpy()
ours = quadrant_matrix(obs, quadrant_layer)
paper_family = paper_quadrants.get(lm.family.name)
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
image = pattern_heatmap(pattern, is_vision, axes[0], title=f"sample 0, layer {quadrant_layer}")
fig.colorbar(image, ax=axes[0], fraction=0.046)
quadrant_heatmap(ours, axes[1], title=f"ours: block means, layer {quadrant_layer} (n={obs.n_samples})")
if paper_family:
    quadrant_heatmap(np.array([[paper_family["vv"], paper_family["vt"]], [paper_family["tv"], paper_family["tt"]]]),
                     axes[2], title=f"paper: block means, layer {paper_quadrants['layer']}")
else:
    axes[2].axis("off")
fig.tight_layout()
plt.show()

sem = quadrant_matrix(obs, quadrant_layer, what="sem")
mass = quadrant_matrix(obs, quadrant_layer, name="decoder.quadrant_mass")
rows = ["| block | paper mean | our mean ± s.e. | our mass |", "|---|---|---|---|"]
for (label, q), (i, j) in zip(names.items(), [(0, 0), (0, 1), (1, 0), (1, 1)]):
    p = f"{paper_family[q]:.6f}" if paper_family else "-"
    rows.append(f"| {label} | {p} | {ours[i, j]:.6f} ± {sem[i, j]:.6f} | {mass[i, j]:.3f} |")
display(Markdown("\n".join(rows)))

# %%
late = vision_mass[-max(1, round(3 * lm.num_layers / 18)):].mean()
early = vision_mass[:-max(1, round(3 * lm.num_layers / 18))].mean()
own = "within their own modality" if ours[0, 0] > ours[0, 1] and ours[1, 1] > ours[1, 0] else "not mainly within their own modality"
print(f"What this run shows: the final token puts {early:.0%} of its attention on image tokens on average "
      f"before the final layers and {late:.0%} in them (image tokens are {n_vis / n_real:.0%} of the prompt); "
      f"at layer {quadrant_layer} queries attend {own} by block mean "
      f"(V→V {ours[0, 0]:.4g} vs V→T {ours[0, 1]:.4g}; T→T {ours[1, 1]:.4g} vs T→V {ours[1, 0]:.4g}).")

# %%
write_results(results, {
    **run_info(lm, dataset=dataset, n_samples=len(samples), batch_size=batch_size, seed=seed,
               quadrant_layer=quadrant_layer),
    "chapter": "04_attention_modality",
    "layers": list(range(lm.num_layers)),
    "layer_note": "layer i is the module layers[i] (0-based)",
    "last_token": obs.summary("decoder.last_attn."),
    "quadrant_mean": obs.summary("decoder.quadrant."),
    "quadrant_mass": obs.summary("decoder.quadrant_mass."),
    "quadrant_layer": {"layer": quadrant_layer, "ours": {q: float(obs.mean(f"decoder.quadrant.{q}")[quadrant_layer])
                                                          for q in QUADRANTS},
                       "paper": paper_family, "paper_layer": paper_quadrants["layer"]},
    "vision_share_of_prompt": n_vis / n_real,
})
