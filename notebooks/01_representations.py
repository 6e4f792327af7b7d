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

# %% tags=["parameters", "remove-cell"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 200
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "01_representations.json"  # where this chapter writes its numbers
system_prompt: str | None = None  # Qwen2-VL: a system turn before the image (None: none, as the paper ran it)
task_prefix = ""  # PaliGemma: task prefix before the question, e.g. "answer en " (none, as the paper ran it)
max_pixels: int | None = None  # Qwen2-VL: the image processor's pixel budget (None: the processor's default)
question: str | None = None  # what every prompt asks (None: the dataset's own, else the counting question)
image_size: int | None = None  # image side in pixels (None: what the model expects: 448 for PaliGemma-448)
band = "sem"  # spread drawn around each mean: "sem" (standard error) or "std" (across samples)

# %% tags=["remove-input"]
from vlmlib.paper import figures, page, setup
from vlmlib.paper import format as fmt
from vlmlib.paper.chapters import representations

run = setup("01_representations", globals())
lm, samples = run.lm, run.samples

# %% [markdown]
# **Question.** Does the language decoder rewrite the image tokens layer after layer, or carry them forward
# nearly unchanged until its last layers? We measure how much each layer turns the direction of the tokens
# it reads.
#
# ```{glue:figure} avgsim
# ---
# alt: >-
#   Line plot of the mean cosine similarity between each decoder layer's input and output, one line
#   for vision tokens and one for text tokens, each with a shaded band of its spread.
# ---
# {glue:md}`result`
#
# How much each decoder layer turns the tokens it reads: the mean cosine similarity of a token's state
# before and after the layer (AvgSim), for vision and text tokens. A value near 1 means the layer barely
# changed the token's direction. Bands: {glue:md}`band`; the paper gives no spread.
# ```
#
# ## What this run shows
#
# ```{glue:md} conclusion
# :format: myst
# ```
#
# Every number of this page is in its results file,
# {download}`01_representations.json <01_representations.json>`;
# the [What holds](../what-holds.md) page states the rule behind each verdict.
#
# ## Method
#
# Each decoder layer's input and output are compared, token by token, with the cosine similarity, averaged
# over the image tokens (and, as a reference, the text tokens). The whole method, how we read the paper and
# how the library implements it: {ref}`How it works, chapter 1 <how-01>`.

# %% [markdown]
# ## What the model sees
#
# Each sample is an image and the question "How many objects are in the image?"; the answer is the count.
# The model reads the image as a grid of {term}`vision tokens`, drawn over the first image and numbered in
# the order the prompt holds them.

# %% tags=["hide-input", "remove-output"]
grid = figures.vision_token_grid(lm, samples[0])
figures.show(figures.input_images_figure(samples, grid=grid), "inputs")
grid_text = f"{grid[0]} × {grid[1]} = {grid[0] * grid[1]}" if grid else "(split image: no one grid)"
figures.caption_text("token-grid", grid_text)

# %% [markdown]
# ```{glue:figure} inputs
# ---
# alt: >-
#   Eight sample images of coloured shapes on plain backgrounds, each titled with its answer, the
#   number of objects; the first image is divided by white lines into the grid of its vision tokens,
#   each cell numbered.
# ---
# The first eight images of this run with their answers. The lines on the first image divide it into
# the {glue:md}`token-grid` vision tokens the model reads it as, one per cell.
# ```
#
# ## Similarity of consecutive layers

# %% tags=["hide-input", "remove-output"]
obs = run.observe(("cosine", "vision_tower"))  # one pass shared with chapters 2, 4 and 6 (vlmlib.obscache)

fig, ax = figures.layer_lines(obs, {"vision": "decoder.cosine.vision", "text": "decoder.cosine.text"},
                              band=band)
ax.set(ylabel="AvgSim: cosine of a layer's\ninput and output",
       title=f"Consecutive-layer cosine similarity ({page.display_name(lm.name)})")
figures.show(fig, "avgsim")

# %% [markdown]
#
# ## Beside the paper
#
# The paper states its result in words. We split our decoder where the paper does (its layers 1-10 and
# 11-18, scaled to our depth) and give the mean AvgSim of the vision tokens on each side.

# %% tags=["remove-input"]
paper = run.paper_values("section_2_1_representations")
ours = representations.summary(obs.mean("decoder.cosine.vision"), obs.sem("decoder.cosine.vision"))
L, split = lm.num_layers, ours["split_layer"]
page.show_markdown("\n".join([
    "| | paper (PaliGemma-3B) | ours |", "|---|---|---|",
    f"| in words | {paper.get('words', '–')} | see the rows below |",
    f"| mean AvgSim, early layers | high (layers 1-10) | {ours['early_mean']:.3f} (layers 0-{split - 1}) |",
    f"| mean AvgSim, late layers | lower (layers 11-18) | {ours['late_mean']:.3f} (layers {split}-{L - 1}) |",
    f"| lowest AvgSim | in layers 11-18 | {ours['lowest']:.3f} ± {ours['lowest_sem']:.3f} at layer "
    f"{ours['lowest_layer']} |",
]))

# %% [markdown]
# ## The vision tower's own layers
#
# The same reading inside the vision encoder, over all its patches.

# %% tags=["hide-input", "remove-output"]
figures.show(figures.tower_lines_figure(obs, "vision_tower.cosine.all", "AvgSim over patches",
                                        "Inside the vision tower", band=band), "tower-avgsim")

# %% [markdown]
# ```{glue:figure} tower-avgsim
# ---
# alt: >-
#   Line plot of the mean cosine similarity between each vision-tower layer's input and output, over
#   all image patches, with a shaded band of its spread.
# ---
# The same measure inside the vision encoder: how much each of its layers turns the image patches.
# ```

# %% [markdown]
# ## The last layer at image positions
#
# The last decoder layer's output at image positions feeds nothing: no later layer reads it, and only
# the final position's output reaches the answer, so no loss trains it (in the organisms and in the
# paper's models alike). A drop of the image tokens' similarity into the last state may therefore say
# nothing about how the model answers. The verdict below is decided twice, on every layer and
# without the last one; if the two disagree, it is *not robust*.

# %% tags=["remove-input"]
points = [
    f"Vision tokens keep a mean similarity of {ours['early_mean']:.3f} across consecutive layers "
    f"0-{split - 1} and {ours['late_mean']:.3f} in layers {split}-{L - 1}.",
    f"The layer that turns them most is layer {ours['lowest_layer']} of 0-{L - 1} "
    f"(AvgSim {fmt.pm(ours['lowest'], ours['lowest_sem'], '.3f')}, one standard error over "
    f"{obs.n_samples} samples).",
]
run.finish({
    "layers": list(range(L)),
    "layer_note": "layer i is the module layers[i] (0-based); AvgSim compares H^(i) with H^(i+1)",
    "avg_sim": {m: {"mean": obs.mean(f"decoder.cosine.{m}"), "sem": obs.sem(f"decoder.cosine.{m}"),
                    "std": obs.std(f"decoder.cosine.{m}")} for m in ("vision", "text")},
    "vision_tower": obs.summary("vision_tower.cosine."),
    "summary": ours,
    "paper": paper,
}, points, above=True)

# %% [markdown]
# ## Exercises
#
# The first exercise builds the chapter's measurement with the trace primitive; the others read its results.
# Each runs on the organisms in seconds; open a hint or a solution only after trying.
#
# 1. **Measure AvgSim yourself** (medium ★★☆, about 20 minutes). Write a function that returns, for each
#    decoder layer, the cosine similarity of each image token's state before and after that layer, averaged
#    over the image tokens of a sample and then over samples: one number per layer, the vision curve of the
#    chapter's first figure. Fill in the function in the next cell; the cell after the solution checks it
#    against the library on four samples (until you fill it in, it checks the solution).
#
#    ```{admonition} Hints
#    :class: dropdown
#    - `Trace(lm, sites)` records each named site while `lm.forward(inputs)` runs inside its `with` block;
#      `inputs = lm.encode_samples([sample])` encodes one sample.
#    - The site `"embed.0"` is the decoder's input and `"resid.3"` the output of the layer numbered 3, so
#      layer 3 reads `"resid.2"` and writes `"resid.3"`.
#    - `lm.vision_mask(inputs)` is true at the image tokens; `torch.nn.functional.cosine_similarity(a, b,
#      dim=-1)` compares two states token by token.
#    ```
#
# 2. **Does the late change depend on what the image holds?** Compare AvgSim of the vision tokens per
#    layer for images with one or two objects and for images with five or six. (`Sample.answer` holds the
#    count; `observe(lm, subset, readings=("cosine",))` reads AvgSim.)
# 3. **Check the residual identity yourself.** With `vlmlib.trace.Trace`, record the input of decoder
#    layer 1 (`"resid.0"`, the output of layer 0), its attention and MLP contributions (`"attn.1"`,
#    `"mlp.1"`) and its output (`"resid.1"`) for one sample, and show that input + attention + MLP equals
#    the output.

# %%
def my_avgsim(lm, samples):
    """One number per decoder layer: the mean cosine similarity of the image tokens' states before
    and after the layer, averaged over a sample's image tokens, then over samples."""
    # TODO: trace "embed.0" and "resid.0" ... "resid.{L-1}"; compare consecutive states at image tokens
    raise NotImplementedError


# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
import numpy as np
import torch

from vlmlib import Trace


def avgsim_solution(lm, samples):
    sites = ["embed.0"] + [f"resid.{layer}" for layer in range(lm.num_layers)]
    per_sample = []
    for sample in samples:
        inputs = lm.encode_samples([sample])
        with torch.no_grad(), Trace(lm, sites) as tr:
            lm.forward(inputs)
        image = lm.vision_mask(inputs)[0]
        states = [tr[s][0, image].float() for s in sites]  # the decoder's input, then each layer's output
        per_sample.append([torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
                           for a, b in zip(states, states[1:])])
    return np.mean(per_sample, axis=0)


# %% tags=["remove-input"]
from vlmlib import observe
from vlmlib.paper import exercises

few = samples[:4]
exercises.check(my_avgsim, avgsim_solution,
                lambda: observe(lm, few, readings=("cosine",), progress=False).mean("decoder.cosine.vision"),
                lm, few, "AvgSim per layer")

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2

by_count = {"1-2 objects": [s for s in samples if s.answer in ("1", "2")],
            "5-6 objects": [s for s in samples if s.answer in ("5", "6")]}
rows = ["| image | n | " + " | ".join(f"layer {i}" for i in range(lm.num_layers)) + " |",
        "|---|---|" + "---|" * lm.num_layers]
seen = {}
for name, subset in by_count.items():
    if subset:
        o = observe(lm, subset, readings=("cosine",), batch_size=batch_size, progress=False)
        seen[name] = (o.mean("decoder.cosine.vision"), o.sem("decoder.cosine.vision"))
        rows.append(f"| {name} | {len(subset)} | " + " | ".join(f"{v:.2f}" for v in seen[name][0]) + " |")
page.show_markdown("\n".join(rows))
# the late layers, where the tokens turn most: is the gap between the groups beyond two standard errors?
if len(seen) < 2 or min(len(s) for s in by_count.values()) < 5:
    page.show_markdown("Too few images in a group (fewer than 5) to compare them; rerun with more samples.")
else:
    (few_mean, few_se), (many_mean, many_se) = seen.values()
    gap, gap_se = many_mean - few_mean, np.sqrt(few_se**2 + many_se**2)
    late = [i for i in range(split, L) if abs(gap[i]) > 2 * gap_se[i]]
    if not late:
        why = (f"In the late layers ({split} to {L - 1}) the two groups differ by no more than two standard "
               "errors: on these images the late change does not depend measurably on how many objects "
               "the image holds.")
    elif all(gap[i] < 0 for i in late) or all(gap[i] > 0 for i in late):
        more = "five or six" if gap[late[0]] < 0 else "one or two"
        why = (f"In {fmt.layer_list(late)} the images with {more} objects keep a lower similarity, by more "
               "than two standard errors: the late layers turn their image tokens further, so the late "
               "change depends on what the image holds.")
    else:
        lower, higher = [i for i in late if gap[i] < 0], [i for i in late if gap[i] > 0]
        why = (f"The images with five or six objects keep a lower similarity in {fmt.layer_list(lower)} and "
               f"a higher one in {fmt.layer_list(higher)}, each by more than two standard errors: the late "
               "change depends on what the image holds, though not simply as more objects, more change.")
    page.show_markdown(why)

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 3", "code_prompt_hide": "Hide solution 3"}
# Solution 3

inputs = lm.encode_samples(samples[:1])
with Trace(lm, ["resid.0", "attn.1", "mlp.1", "resid.1"]) as tr:
    lm.forward(inputs)
gap = (tr["resid.0"] + tr["attn.1"] + tr["mlp.1"] - tr["resid.1"]).abs().max().item()
largest = tr["resid.1"].abs().max().item()
rounding = 16 * torch.finfo(tr["resid.1"].dtype).eps * largest  # a few roundings of the largest entry
page.show_markdown(
    f"Largest |input + attention + MLP − output| in layer 1: {fmt.decimal(gap, 2)}, against a largest state "
    f"entry of {fmt.decimal(largest, 2)}. "
    + ("That is within rounding: the layer's output is its input plus what its two sublayers add, so the "
       "residual stream only accumulates, and every later state still holds the earlier ones as a sum."
       if gap <= rounding else
       "That is more than rounding explains: something between the recorded sublayers (a norm applied after "
       "the sum, say) changes the state, so the sites recorded here do not add up to the layer's output."))
