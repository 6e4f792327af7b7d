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

# %% tags=["parameters", "remove-cell"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 200
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "04_attention_modality.json"  # where this chapter writes its numbers
system_prompt: str | None = None  # Qwen2-VL: a system turn before the image (None: none, as the paper ran it)
task_prefix = ""  # PaliGemma: task prefix before the question, e.g. "answer en " (none, as the paper ran it)
max_pixels: int | None = None  # Qwen2-VL: the image processor's pixel budget (None: the processor's default)
question: str | None = None  # what every prompt asks (None: the dataset's own, else the counting question)
image_size: int | None = None  # image side in pixels (None: what the model expects: 448 for PaliGemma-448)
quadrant_layer: int | None = None  # Appendix C quadrants' layer; None: the paper's layer 10, scaled to depth
band = "sem"  # spread drawn around each mean: "sem" (standard error) or "std" (across samples)

# %% tags=["remove-input"]
import numpy as np

from vlmlib import attention_pattern
from vlmlib.paper import figures, page, setup
from vlmlib.paper import format as fmt
from vlmlib.paper.chapters import attention_modality

run = setup("04_attention_modality", globals())  # quadrant_layer: None becomes the paper's layer 10, scaled
lm, samples, quadrant_layer = run.lm, run.samples, run.params["quadrant_layer"]
paper_quadrants = run.extra["paper_quadrants"]

# %% [markdown]
# **Question.** Where does the token that produces the answer look, layer by layer: at the image or at the
# text? And do image and text tokens attend within their own modality or across?
#
# ```{glue:figure} attention-by-modality
# ---
# alt: >-
#   Line plot over the decoder layers of the share of the final token's attention that goes to image
#   tokens and the share that goes to text tokens, each with a shaded band of its spread.
# ---
# {glue:md}`result`
#
# Where the token that produces the answer looks: the mass of the final token's attention on vision and
# on text keys in each decoder layer (the two add up to 1). Bands: {glue:md}`band`.
# ```
#
# ## What this run shows
#
# ```{glue:md} conclusion
# :format: myst
# ```
#
# Every number of this page is in its results file,
# {download}`04_attention_modality.json <04_attention_modality.json>`;
# the [What holds](../what-holds.md) page states the rule behind each verdict.
#
# ## Method
#
# At every layer we sum the final token's attention weights (averaged over heads) over the image keys and
# over the text keys, and split the whole attention matrix into four blocks by query and key modality. The
# whole method, how we read the paper and how the library implements it:
# {ref}`How it works, chapter 4 <how-04>`.

# %% [markdown]
# ## The final token's attention by modality (Figure 2)

# %% tags=["hide-input", "remove-output"]
# One pass shared with chapters 1, 2 and 6 when the runner gives a cache (vlmlib.obscache).
obs = run.observe(("attention",))
inputs = lm.encode_samples(samples[:1])
n_vis, n_real = int(lm.vision_mask(inputs)[0].sum()), int(inputs["attention_mask"][0].sum())

fig = figures.modality_attention_figure(obs, title="Final-token attention by key modality", band=band)
figures.show(fig, "attention-by-modality")
vision_mass = obs.mean("decoder.last_attn.vision")

# %% tags=["remove-input"]
paper_words = run.paper_values("section_2_3_attention").get("words", "")
page.show_markdown(
    f"Bands: one standard error of the mean across samples. For reference, a final token attending uniformly "
    f"to its prompt would give the image {n_vis / n_real:.0%} of its attention: {n_vis} of the {n_real} "
    f"prompt tokens are image tokens.\n\n**The paper (PaliGemma-3B, Figure 2):** {paper_words}")

# %% [markdown]
# ## Per token: attention over each modality's share of the prompt
#
# A modality with more tokens receives more attention mass even from a reader that attends uniformly,
# so mass alone measures token counts as much as preference. Dividing each modality's mass by its share
# of the prompt's tokens gives attention **per token, relative to uniform**: 1 is what uniform
# attention gives, 2 twice as much per token. Many transformers also park attention on the first token
# (an *attention sink*) whatever it holds; the dashed lines repeat the measure with the first token
# left out, as key and in the count. The verdict below uses the per-token measure and must hold under
# the sink control too.

# %% tags=["hide-input", "remove-output"]
figures.show(figures.per_token_attention_figure(obs, band=band), "attention-per-token")
sink = obs.mean("decoder.last_attn.first")

# %% [markdown]
# ```{glue:figure} attention-per-token
# ---
# alt: >-
#   Line plot over the decoder layers of the final token's attention per vision token and per text
#   token, relative to uniform attention, with and without the first prompt token; a dotted line at 1.
# ---
# The final token's attention per token, relative to uniform attention (the dotted line at 1): each
# modality's mass over its share of the prompt, with the first prompt token (a possible
# {term}`attention sink`) counted and left out.
# ```

# %% tags=["remove-input"]
page.show_markdown(
    f"The first prompt token alone takes {sink.min():.0%} to {sink.max():.0%} of the final token's attention "
    f"across layers (uniform attention would give it {1 / n_real:.0%}).")

# %% [markdown]
# ## Query/key modality quadrants at every layer
#
# Top: the mean weight in each block (log scale; Appendix C's measure). Bottom: the mass a query of one
# modality puts on the keys of each modality.

# %% tags=["hide-input", "remove-output"]
names = figures.QUADRANTS  # block name -> statistic suffix: {"V→V": "vv", "V→T": "vt", ...}
figures.show(figures.quadrant_lines_figure(obs, band=band), "quadrants")

# %% [markdown]
# ```{glue:figure} quadrants
# ---
# alt: >-
#   Two panels over the decoder layers, one line per block of queries and keys (vision to vision, vision
#   to text, text to vision, text to text). Top, the mean attention weight in each block on a log scale.
#   Bottom, the attention mass a query puts on each modality.
# ---
# Attention between the modalities at every layer, by query and key (V→T: vision queries reading text
# keys): (a) the mean weight in each block, Appendix C's measure, on a log scale; (b) the mass a query
# of one modality puts on the keys of each modality.
# ```

# %% [markdown]
# ## Appendix C at one layer, beside the paper (Figures 9-10)
#
# One sample's head-averaged attention at the quadrant layer, tokens reordered vision first (rows are
# queries, columns keys; colour on a power scale so small weights stay visible):

# %% tags=["hide-input", "remove-output"]
pattern = attention_pattern(lm, inputs, quadrant_layer)
is_vision = lm.vision_mask(inputs)[0, :n_real].cpu().numpy()
figures.show(figures.pattern_figure(pattern, is_vision, title=f"sample 0, layer {quadrant_layer}"), "pattern")

# %% [markdown]
# ```{glue:figure} pattern
# ---
# alt: >-
#   Heatmap of one sample's attention weights at one layer, queries as rows and keys as columns, image
#   tokens first; lines mark where the image tokens end.
# ---
# One sample's attention at the quadrant layer, averaged over heads: rows are queries, columns keys,
# image tokens first (the lines mark where they end). Colour from 0 on a power scale, so that small
# weights stay visible.
# ```

# %% [markdown]
# Block means across samples, ours and the paper's for the same family. The two models have very
# different numbers of image tokens (ours: see under Figure 2; PaliGemma-3B: 1024), so block means differ
# in size by construction: each heatmap has its own, labelled colour scale. Compare the pattern between
# blocks, not the magnitudes; the table below gives the numbers.

# %% tags=["hide-input", "remove-output"]
ours = figures.quadrant_matrix(obs, quadrant_layer)
paper_family = paper_quadrants.get(lm.family.name)
panels = [(ours, f"ours: layer {quadrant_layer}, n = {obs.n_samples}")]
if paper_family:
    panels.append((np.array([[paper_family["vv"], paper_family["vt"]],
                             [paper_family["tv"], paper_family["tt"]]]),
                   f"paper: layer {paper_quadrants['layer']}"))
figures.show(figures.quadrant_heatmaps_figure(panels), "quadrant-heatmaps")

# %% [markdown]
# ```{glue:figure} quadrant-heatmaps
# ---
# alt: >-
#   Two-by-two heatmaps of the mean attention weight per block of queries and keys at one layer, ours
#   and, where the paper reports it, the paper's, each with its own colour scale starting at 0.
# ---
# Mean attention weight in each block of queries and keys at the quadrant layer, ours beside the
# paper's for the same family. Each colour scale starts at 0, so that blocks that differ little look
# alike; the two scales differ, since the models have different numbers of image tokens.
# ```

# %% tags=["remove-input"]
sem = figures.quadrant_matrix(obs, quadrant_layer, what="sem")
mass = figures.quadrant_matrix(obs, quadrant_layer, name="decoder.quadrant_mass")
rows = [f"| block | paper: mean (layer {paper_quadrants['layer']}) "
        f"| ours: mean ± s.e. (layer {quadrant_layer}) | ours: mass |", "|---|---|---|---|"]
impossible = run.extra["paper_quadrants_impossible"].get(lm.family.name, {})
for (label, q), (i, j) in zip(names.items(), [(0, 0), (0, 1), (1, 0), (1, 1)]):
    p = "–" if not paper_family else "left out¹" if q in impossible else f"{paper_family[q]:.6f}"
    rows.append(f"| {label} | {p} | {ours[i, j]:.6f} ± {sem[i, j]:.6f} | {mass[i, j]:.3f} |")
notes = [f"¹ The paper's {q.upper()[0]}→{q.upper()[1]} value is left out of every comparison: {why}."
         for q, why in impossible.items()]
page.show_markdown("\n".join(rows) + ("\n\n" + " ".join(notes) if notes else ""))

# %% tags=["remove-input"]
shift = attention_modality.vision_shift(vision_mass, lm.family.name)  # the paper's "final layers"
k, early, late, peak = shift["final_count"], shift["before_final"], shift["final"], shift["peak_layer"]
own = attention_modality.within_own_modality(ours)
points = [
    f"The final token puts {early:.0%} of its attention on image tokens on average before the final "
    f"{k} layer{'s' if k > 1 else ''} and {late:.0%} in {'them' if k > 1 else 'it'}; image tokens are "
    f"{n_vis / n_real:.0%} of the prompt.",
    f"Per token, relative to uniform attention, the image gets "
    f"{obs.mean('decoder.last_attn_ratio.vision').min():.2f}-{obs.mean('decoder.last_attn_ratio.vision').max():.2f}"
    f" times its share and the text {obs.mean('decoder.last_attn_ratio.text').min():.2f}-"
    f"{obs.mean('decoder.last_attn_ratio.text').max():.2f} times, across layers.",
    f"Its largest share on the image is at layer {peak} "
    f"({fmt.percent(vision_mass.max(), obs.sem('decoder.last_attn.vision')[peak])}, one standard error over "
    f"{obs.n_samples} samples).",
    f"At layer {quadrant_layer} queries attend "
    f"{'within their own modality' if own else 'not mainly within their own modality'} "
    f"by block mean (V→V {ours[0, 0]:.3g} vs V→T {ours[0, 1]:.3g}; "
    f"T→T {ours[1, 1]:.3g} vs T→V {ours[1, 0]:.3g}).",
]
run.finish({
    "layers": list(range(lm.num_layers)),
    "layer_note": "layer i is the module layers[i] (0-based)",
    "last_token": obs.summary("decoder.last_attn."),
    "last_token_ratio": obs.summary("decoder.last_attn_ratio"),
    "quadrant_mean": obs.summary("decoder.quadrant."),
    "quadrant_mass": obs.summary("decoder.quadrant_mass."),
    "quadrant_layer": {"layer": quadrant_layer,
                       "ours": attention_modality.quadrant_means(obs, quadrant_layer),
                       "paper": paper_family, "paper_layer": paper_quadrants["layer"]},
    "vision_share_of_prompt": n_vis / n_real,
}, points, above=True)

# %% [markdown]
# ## Exercises
#
# The first exercise builds the chapter's measurement with the trace primitive; the others read its results.
# Each runs on the organisms in seconds; open a hint or a solution only after trying.
#
# 1. **Measure where the final token looks** (medium ★★☆, about 25 minutes). Write a function that
#    returns, for each decoder layer, the attention weight the final token puts on all image tokens together,
#    averaged over heads and then over samples: the vision curve of the chapter's first figure. Fill in the
#    function in the next cell; the cell after the solution checks it against the library on four samples
#    (until you fill it in, it checks the solution).
#
#    ```{admonition} Hints
#    :class: dropdown
#    - The site `"attn_weights.3"` holds the attention probabilities of the layer numbered 3, of shape
#      (batch, heads, query, key); they exist only with eager attention, so run the pass inside `with
#      decoder_attention(lm, "eager"):` (from the library's observation module).
#    - `lm.last_index(inputs)[0]` is the final token's position and `lm.vision_mask(inputs)[0]` is true at
#      the image keys.
#    - Sum over the image keys, then average over heads.
#    ```
#
# 2. **More than a uniform reader?** In which layers does the final token put more attention on the
#    image than a token attending uniformly to the prompt would (the image's share of the prompt)?
# 3. **First and last layer.** Draw one sample's attention pattern (`attention_pattern`,
#    `pattern_heatmap`) at the first and at the last decoder layer. How do the text queries' weights on
#    the image differ?

# %%
def my_image_attention(lm, samples):
    """One number per decoder layer: the final token's attention mass on the image, heads averaged."""
    # TODO: trace "attn_weights.0" ... with eager attention; sum the final query's weights over image keys
    raise NotImplementedError


# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
import numpy as np
import torch

from vlmlib import Trace
from vlmlib.observation import decoder_attention


def image_attention_solution(lm, samples):
    sites = [f"attn_weights.{layer}" for layer in range(lm.num_layers)]
    per_sample = []
    for sample in samples:
        inputs = lm.encode_samples([sample])
        with torch.no_grad(), decoder_attention(lm, "eager"), Trace(lm, sites) as tr:
            lm.forward(inputs)
        image, last = lm.vision_mask(inputs)[0], lm.last_index(inputs)[0]
        per_sample.append([tr[s][0, :, last][:, image].float().sum(-1).mean().item() for s in sites])
    return np.mean(per_sample, axis=0)


# %% tags=["remove-input"]
from vlmlib import observe
from vlmlib.paper import exercises

few = samples[:4]
exercises.check(my_image_attention, image_attention_solution,
                lambda: observe(lm, few, readings=("attention",), progress=False).mean(
                    "decoder.last_attn.vision"),
                lm, few, "attention masses on the image per layer")

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2
uniform = n_vis / n_real
above = [i for i, v in enumerate(vision_mass) if v > uniform]
shares = ", ".join(fmt.percent(v) for v in vision_mass)
# beyond two standard errors on either side of the uniform share
se = obs.sem("decoder.last_attn.vision")
clearly_above = [i for i in above if vision_mass[i] - 2 * se[i] > uniform]
clearly_below = [i for i in range(lm.num_layers) if vision_mass[i] + 2 * se[i] < uniform]
said = []
if clearly_above:
    where = "each of these" if clearly_above == above else fmt.layer_list(clearly_above)
    said.append(f"In {where} it gives more by over two standard errors: there the final token seeks the "
                "image out.")
if clearly_below:
    said.append(f"In {fmt.layer_list(clearly_below)} it reads the image less than a uniform reader would, "
                "favouring the text.")
if len(clearly_above) + len(clearly_below) < lm.num_layers:
    said.append(f"{'Elsewhere' if said else 'In every layer'} it stays within two standard errors of the "
                "uniform share: there these samples cannot tell a reader that seeks the image from one that "
                "attends evenly.")
page.show_markdown(f"Uniform attention would give the image {fmt.percent(uniform)}; the final token gives it "
                   f"more in {fmt.layer_list(above)} (shares {shares}). " + " ".join(said))

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 3", "code_prompt_hide": "Hide solution 3"}
# Solution 3
fig, axes = figures.book_figure(1, 2, figsize=(figures.COLUMN_WIDTH, 3.6))
on_image = {}
for ax, layer in zip(axes, (0, lm.num_layers - 1)):
    pattern = attention_pattern(lm, inputs, layer)
    figures.pattern_heatmap(pattern, is_vision, ax, title=f"layer {layer}")
    on_image[layer] = pattern[~is_vision][:, is_vision].sum(1).mean()  # text queries' mass on image keys
figures.show(fig, "first-and-last-pattern", alt="Two heatmaps of one sample's attention, queries as rows "
             "and keys as columns, image tokens first: at the first and at the last decoder layer.")
first, last = on_image[0], on_image[lm.num_layers - 1]
change = ("about as much in both." if abs(last - first) < 0.05 else
          "more at the last layer: late text tokens still gather from the image." if last > first else
          "less at the last layer: by then the text tokens read mostly each other.")
page.show_markdown(f"The text queries of this sample put {fmt.percent(first)} of their attention on the "
                   f"image at layer 0 and {fmt.percent(last)} at layer {lm.num_layers - 1}, {change} One "
                   "sample shows a pattern, not an average; the chapter's first figure gives the average.")
