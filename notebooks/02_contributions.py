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
band = "sem"  # spread drawn around each mean: "sem" (standard error) or "std" (across samples)

# %% tags=["remove-input"]
from vlmlib.paper import figures, page, setup
from vlmlib.paper import format as fmt
from vlmlib.paper.chapters import contributions

run = setup("02_contributions", globals())
lm, samples = run.lm, run.samples

# %% [markdown]
# **Learning objectives.** After this chapter you can (1) split a layer's update of the residual stream
# into what attention adds and what the MLP adds, (2) check that split against the residual identity,
# and (3) compare the two sublayers' shares for image and text tokens.
#
# **Question.** When a decoder layer changes a token, is it attention (mixing in other tokens) or the
# MLP (transforming the token on its own) that does the work, and does that differ between vision and
# text tokens?
#
# **Method.** A pre-norm decoder layer $l$ updates the residual stream in two additions,
#
# $$H^{(l)} = H^{(l-1)} + \Delta_{\text{Attn}}^{(l)} + \Delta_{\text{MLP}}^{(l)},$$
#
# and we read each addition exactly as it is added (for Gemma-2-style blocks {cite:p}`gemma2_2024`, after the
# post-sublayer norm), so the identity holds to float tolerance; the engine checks it on every batch.
# For every token we take the L2 norms $\|\Delta_{\text{Attn},t}\|$ and $\|\Delta_{\text{MLP},t}\|$ and
# attention's relative share
#
# $$\text{Contrib}_{\text{Attn},t}^{(l)} =
# \frac{\|\Delta_{\text{Attn},t}^{(l)}\|}{\|\Delta_{\text{Attn},t}^{(l)}\| +
# \|\Delta_{\text{MLP},t}^{(l)}\|},$$
#
# average each over the vision tokens (or the text tokens) of a sample, then over samples. Eq. 7 leaves
# open whether the ratio is taken per token or between averaged norms; we report the per-token share
# and give the ratio of the averaged norms beside it. All of it comes from one unchanged forward pass
# (`vlmlib.observation`), which also reads the vision tower's own layers the same way.
#
# **How we count layers.** The figures and tables number the layers from 0, as the paper's figures do:
# the layer numbered 0 is the first decoder layer ($l = 1$ above), which writes $H^{(1)}$.
#
# **Paper's finding.** PaliGemma: attention and MLP contribute roughly equally (attention 40-60%) in
# most layers, for vision and text tokens; the MLP spikes at the final layer (over 80%, L2 norm from
# about 100 to 400). Qwen2-VL: attention dominates (about 60-70% for text) until the late layers, where
# the MLP spikes.
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
# ```{glue:figure} contributions-vision
# ---
# alt: >-
#   Two panels over the decoder layers. Top, line plot of the mean size of what attention and what the
#   MLP add to vision tokens. Bottom, stacked bars of attention's share and the MLP's share of the two.
# ---
# What attention and the MLP add to the vision tokens, layer by layer: (a) the mean L2 norm of each
# contribution, (b) attention's share of the two norms (eq. 7), the MLP's stacked above it; the dotted
# line is an even split. Bands and error bars: one standard error of the mean across samples
# (`band="std"` draws the spread across samples instead); the paper gives no spread.
# ```
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
# the two norms, the MLP's stacked above it. Bands and error bars: one standard error of the mean.
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
# (b) attention's share of the two norms. Bands and error bars: one standard error of the mean.
# ```

# %% [markdown]
# ## The last layer at image positions
#
# The last decoder layer's output at image positions feeds nothing: no later layer reads it, and only
# the final position's output reaches the answer, so no loss trains it (in the organisms and in the
# paper's models alike). What attention and the MLP add to image tokens in the last layer may therefore
# say nothing about how the model answers. The verdict below is decided twice, on every layer and
# without the last one; if the two disagree, it is *not robust*.

# %% [markdown]
# ## What this run shows
#
# Our numbers, then the verdict of each claim of the paper this chapter answers, by the explicit rules
# of the [What holds](../what-holds.md) page. Every number of this page is in its results file,
# {download}`02_contributions.json <02_contributions.json>`.

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
}, points)

# %% [markdown]
# ## Exercises
#
# 1. **Where do the modalities part ways?** List the layers in which attention contributes more than the
#    MLP for text tokens but not for vision tokens (`obs.mean("decoder.attn_share.text")`).
# 2. **Two readings of eq. 7.** The per-token share and the ratio of averaged norms
#    (`obs.ratio_of_means("vision")`) can differ. In which layers do they differ by more than five
#    percentage points, and why can they differ at all?

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
text_share, vision_share = obs.mean("decoder.attn_share.text"), obs.mean("decoder.attn_share.vision")
parted = [i for i in range(lm.num_layers) if text_share[i] > 0.5 >= vision_share[i]]
page.show_markdown(f"Attention leads for text but not for vision tokens in {fmt.layer_list(parted)} "
                   f"(text shares {', '.join(fmt.percent(v) for v in text_share)}).")

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2
per_token, of_means = obs.mean("decoder.attn_share.vision"), obs.ratio_of_means("vision")
apart = [f"layer {i}: {per_token[i]:.0%} vs {of_means[i]:.0%}" for i in range(lm.num_layers)
         if abs(per_token[i] - of_means[i]) > 0.05]
page.show_markdown("Per-token share vs ratio of averaged norms, where they differ by more than 5 points: "
                   + ("; ".join(apart) or "nowhere") + ". A mean of ratios is not a ratio of means: "
                   "tokens with large updates weigh more in the second, every token the same in the first.")
