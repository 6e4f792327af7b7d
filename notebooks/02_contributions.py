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

# %% tags=["parameters", "remove-cell"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 200
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "02_contributions.json"  # where this chapter writes its numbers
system_prompt: str | None = None  # Qwen2-VL: a system turn before the image (None: none, as the paper ran it)
task_prefix = ""  # PaliGemma: task prefix before the question, e.g. "answer en " (none, as the paper ran it)
max_pixels: int | None = None  # Qwen2-VL: the image processor's pixel budget (None: the processor's default)
question: str | None = None  # what every prompt asks (None: the dataset's own, else the counting question)
image_size: int | None = None  # image side in pixels (None: what the model expects: 448 for PaliGemma-448)
band = "sem"  # spread drawn around each mean: "sem" (standard error) or "std" (across samples)

# %% tags=["remove-input"]
from vlmlib.paper import figures, page, setup
from vlmlib.paper import format as fmt
from vlmlib.paper.chapters import contributions

run = setup("02_contributions", globals())
lm, samples = run.lm, run.samples

# %% [markdown]
# **Question.** When a decoder layer changes a token, is it attention (mixing in other tokens) or the MLP
# (transforming the token on its own) that does the work? And does that differ between image and text
# tokens?
#
# ```{glue:figure} contributions-vision
# ---
# alt: >-
#   Two panels over the decoder layers. Top, line plot of the mean size of what attention and what the
#   MLP add to vision tokens. Bottom, stacked bars of attention's share and the MLP's share of the two.
# ---
# {glue:md}`result`
#
# What attention and the MLP add to the vision tokens, layer by layer: (a) the mean L2 norm of each
# contribution, (b) attention's share of the two norms (eq. 7), the MLP's stacked above it; the dotted
# line is an even split. Bands and error bars: {glue:md}`band`; the paper gives no spread.
# ```
#
# ## What this run shows
#
# ```{glue:md} conclusion
# :format: myst
# ```
#
# Every number of this page is in its results file,
# {download}`02_contributions.json <02_contributions.json>`;
# the [What holds](../what-holds.md) page states the rule behind each verdict.
#
# ## Method
#
# Each layer's update of the residual stream is split into exactly what attention adds and what the MLP
# adds; we compare the sizes (L2 norms) of the two additions, for image and text tokens. The whole method,
# how we read the paper and how the library implements it: {ref}`How it works, chapter 2 <how-02>`.
#
# ## One observation pass
#
# The engine hooks every decoder layer (its input, its attention and MLP contributions, its output)
# and every vision-tower layer, reduces each to per-sample means on the fly, and adds them to running
# sums. Attention weights are not needed here, so attention runs with the model's fused kernel.

# %% tags=["hide-input"]
# One pass shared with chapters 1, 4 and 6 when the runner gives a cache (vlmlib.obscache).
obs = run.observe(("contributions", "update", "vision_tower"))
identity = obs.maxima
page.show_markdown(
    f"Residual identity $H^{{(l)}} = H^{{(l-1)}} + \\Delta_\\text{{Attn}} + \\Delta_\\text{{MLP}}$, "
    f"checked on every batch: largest error {fmt.decimal(identity['decoder.identity_error'], 2)} against a "
    f"largest state entry of {fmt.decimal(identity['decoder.max_abs_state'], 2)} in the decoder, "
    f"{fmt.decimal(identity['vision_tower.identity_error'], 2)} in the vision tower.")

# %% [markdown]
# ## Vision tokens (Figures 5 and 7)
#
# Top: the mean L2 norm of what each sublayer adds. Bottom: attention's share of the two (eq. 7), the
# MLP's stacked above it; the dotted line is an even split.

# %% tags=["hide-input", "remove-output"]
figures.show(figures.contributions_figure(obs, "vision", title="Contributions to vision tokens", band=band),
             "contributions-vision")

# %% [markdown]
#
# ## Text tokens (Figures 6 and 8)

# %% tags=["hide-input", "remove-output"]
figures.show(figures.contributions_figure(obs, "text", title="Contributions to text tokens", band=band),
             "contributions-text")

# %% [markdown]
# ```{glue:figure} contributions-text
# ---
# alt: >-
#   Two panels over the decoder layers. Top, line plot of the mean size of what attention and what the
#   MLP add to text tokens. Bottom, stacked bars of attention's share and the MLP's share of the two.
# ---
# The same for the text tokens: (a) the mean L2 norm of each contribution, (b) attention's share of
# the two norms, the MLP's stacked above it. Bands and error bars: {glue:md}`band`.
# ```
#
# ## Beside the paper
#
# The paper states its results as ranges in words; we put our numbers next to them. "Most layers"
# is read as all layers but the last.

# %% tags=["remove-input"]
paper = run.paper_values("appendix_b_contributions")
ours = {m: contributions.summary(obs, m) for m in ("vision", "text")}
ratio = {m: obs.ratio_of_means(m) for m in ("vision", "text")}
rows = ["| tokens | measure | paper | ours |", "|---|---|---|---|"]
for m in ("vision", "text"):
    p, o = paper.get(m, {}), ours[m]
    cell = {key: contributions.paper_cell(p, key) for key in ("share", "final", "norm")}
    lo, hi = o["attn_share_range_most_layers"]
    rows += [
        f"| {m} | attention share, layers 0 to {lm.num_layers - 2} | {cell['share']} | {lo:.0%}-{hi:.0%} |",
        f"| {m} | MLP share, final layer | {cell['final']} | "
        f"{fmt.percent(o['mlp_share_final_layer'], o['mlp_share_final_layer_sem'])} |",
        f"| {m} | MLP norm: largest before the final layer → final layer | {cell['norm']} | "
        f"{o['mlp_norm_before_final_max']:.3g} → {o['mlp_norm_final_layer']:.3g} |",
        f"| {m} | attention share as a ratio of averaged norms (eq. 7 read the other way), range | – | "
        f"{ratio[m].min():.0%}-{ratio[m].max():.0%} |",
    ]
    if p.get("words"):
        rows.append(f"| {m} | the paper in words | {p['words']} | "
                    f"MLP largest at layer {o['mlp_peak_layer']}; attention larger than the MLP in "
                    f"{len(o['attn_dominant_layers'])} of {lm.num_layers} layers |")
page.show_markdown("\n".join(rows))

# %% [markdown]
# ## The vision tower's own layers
#
# The same decomposition inside the vision encoder (all its patches; there is no text there).

# %% tags=["hide-input", "remove-output"]
fig = figures.contributions_figure(obs, "all", prefix="vision_tower", band=band,
                                   title="Contributions inside the vision tower")
figures.show(fig, "contributions-tower")

# %% [markdown]
# ```{glue:figure} contributions-tower
# ---
# alt: >-
#   Two panels over the vision-tower layers. Top, line plot of the mean size of what attention and what
#   the MLP add to the image patches. Bottom, stacked bars of attention's share and the MLP's share.
# ---
# Inside the vision encoder: (a) the mean L2 norm of what attention and the MLP add to its patches,
# (b) attention's share of the two norms. Bands and error bars: {glue:md}`band`.
# ```

# %% [markdown]
# ## The last layer at image positions
#
# The last decoder layer's output at image positions feeds nothing: no later layer reads it, and only
# the final position's output reaches the answer, so no loss trains it (in the organisms and in the
# paper's models alike). What attention and the MLP add to image tokens in the last layer may therefore
# say nothing about how the model answers. The verdict below is decided twice, on every layer and
# without the last one; if the two disagree, it is *not robust*.

# %% tags=["remove-input"]
v, t = ours["vision"], ours["text"]
points = [
    f"Before the last layer, attention's share of the update ranges "
    f"{v['attn_share_range_most_layers'][0]:.0%}-{v['attn_share_range_most_layers'][1]:.0%} for vision "
    f"tokens and {t['attn_share_range_most_layers'][0]:.0%}-"
    f"{t['attn_share_range_most_layers'][1]:.0%} for text tokens.",
    f"At the last layer the MLP carries "
    f"{fmt.percent(v['mlp_share_final_layer'], v['mlp_share_final_layer_sem'])} (vision) and "
    f"{fmt.percent(t['mlp_share_final_layer'], t['mlp_share_final_layer_sem'])} (text) of it "
    f"(± one standard error over {obs.n_samples} samples).",
    f"The MLP's largest contribution is at layer {v['mlp_peak_layer']} for vision and "
    f"{t['mlp_peak_layer']} for text tokens (layers 0-{lm.num_layers - 1}).",
]
run.finish({
    "layers": list(range(lm.num_layers)),
    "layer_note": "layer i is the module layers[i] (0-based), writing H^(i+1)",
    "decoder": obs.summary("decoder."),
    "vision_tower": obs.summary("vision_tower."),
    "ratio_of_means": ratio,
    "identity_error": obs.maxima,
    "summary": ours,
    "paper": paper,
}, points, above=True)

# %% [markdown]
# ## Exercises
#
# The first exercise builds the chapter's measurement with the trace primitive; the others read its results.
# Each runs on the organisms in seconds; open a hint or a solution only after trying.
#
# 1. **Measure what attention adds** (medium ★★☆, about 20 minutes). Write a function that returns, for
#    each decoder layer, the mean L2 norm of what attention adds to the residual stream at the image tokens
#    (averaged over a sample's image tokens, then over samples): the attention curve of the chapter's first
#    figure. Fill in the function in the next cell; the cell after the solution checks it against the library
#    on four samples (until you fill it in, it checks the solution).
#
#    ```{admonition} Hints
#    :class: dropdown
#    - The site `"attn.3"` is exactly what attention adds to the residual stream in the layer numbered 3
#      (after any post-attention norm), one vector per token.
#    - Encode one sample with `lm.encode_samples([sample])`, run `lm.forward(inputs)` inside `with
#      Trace(lm, sites) as tr:`, and read `tr[site]`, of shape (1, tokens, width).
#    - `lm.vision_mask(inputs)` is true at the image tokens; `tensor.norm(dim=-1)` gives one norm per
#      token.
#    ```
#
# 2. **Where do the modalities part ways?** List the layers in which attention contributes more than the
#    MLP for text tokens but not for vision tokens (`obs.mean("decoder.attn_share.text")`).
# 3. **Two readings of eq. 7.** The per-token share and the ratio of averaged norms
#    (`obs.ratio_of_means("vision")`) can differ. In which layers do they differ by more than five
#    percentage points, and why can they differ at all?

# %%
def my_attention_norms(lm, samples):
    """One number per decoder layer: the mean L2 norm of attention's contribution at the image tokens."""
    # TODO: trace "attn.0" ... "attn.{L-1}"; take each image token's norm; average over tokens, then samples
    raise NotImplementedError


# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
import numpy as np
import torch

from vlmlib import Trace


def attention_norms_solution(lm, samples):
    sites = [f"attn.{layer}" for layer in range(lm.num_layers)]
    per_sample = []
    for sample in samples:
        inputs = lm.encode_samples([sample])
        with torch.no_grad(), Trace(lm, sites) as tr:
            lm.forward(inputs)
        image = lm.vision_mask(inputs)[0]
        per_sample.append([tr[s][0, image].float().norm(dim=-1).mean().item() for s in sites])
    return np.mean(per_sample, axis=0)


# %% tags=["remove-input"]
from vlmlib import observe
from vlmlib.paper import exercises

few = samples[:4]
exercises.check(my_attention_norms, attention_norms_solution,
                lambda: observe(lm, few, readings=("contributions",), progress=False).mean(
                    "decoder.attn_norm.vision"),
                lm, few, "attention norms per layer")

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2
text_share, vision_share = obs.mean("decoder.attn_share.text"), obs.mean("decoder.attn_share.vision")
parted = [i for i in range(lm.num_layers) if text_share[i] > 0.5 >= vision_share[i]]
text_leads = [i for i in range(lm.num_layers) if text_share[i] > 0.5]
if parted:
    why = ("There text tokens take most of their update from attention, that is from reading other tokens, "
           "while image tokens take most of theirs from the MLP, working on what each token already holds: "
           "the two modalities part ways.")
elif text_leads:
    why = (f"Wherever attention leads for text ({fmt.layer_list(text_leads)}) it leads for vision too: on "
           "this measure the modalities do not part ways.")
else:
    why = ("Attention never contributes more than the MLP for text tokens here, so no layer can set the "
           "modalities apart in this sense.")
page.show_markdown(f"Attention leads for text but not for vision tokens in {fmt.layer_list(parted)} "
                   f"(text shares {', '.join(fmt.percent(v) for v in text_share)}). {why}")

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 3", "code_prompt_hide": "Hide solution 3"}
# Solution 3
per_token, of_means = obs.mean("decoder.attn_share.vision"), obs.ratio_of_means("vision")
far = [i for i in range(lm.num_layers) if abs(per_token[i] - of_means[i]) > 0.05]
apart = [f"layer {i}: {fmt.percent(per_token[i])} vs {fmt.percent(of_means[i])}" for i in far]
why = ("A mean of ratios is not a ratio of means: tokens with large updates weigh more in the second, every "
       "token the same in the first. ")
if not far:
    why += ("Here the two agree in every layer, so a token's attention share hardly depends on how large its "
            "update is, and either reading tells the same story.")
else:
    bigger = [i for i in far if per_token[i] > of_means[i]]
    smaller = [i for i in far if per_token[i] < of_means[i]]
    if bigger:
        why += (f"Where the per-token share is the larger ({fmt.layer_list(bigger)}), the tokens with the "
                "largest updates get more of them from the MLP than the typical token does. ")
    if smaller:
        why += (f"Where it is the smaller ({fmt.layer_list(smaller)}), the tokens with the largest updates "
                "get more of them from attention. ")
page.show_markdown("Per-token share vs ratio of averaged norms, where they differ by more than 5 points: "
                   + ("; ".join(apart) or "nowhere") + ". " + why.strip())
