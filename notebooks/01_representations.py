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
band = "sem"  # spread drawn around each mean: "sem" (standard error) or "std" (across samples)

# %% tags=["remove-input"]
from vlmlib.paper import figures, page, setup
from vlmlib.paper import format as fmt
from vlmlib.paper.chapters import representations

run = setup("01_representations", globals())
lm, samples = run.lm, run.samples

# %% [markdown]
# **Learning objectives.** After this chapter you can (1) read the residual stream of a decoder at
# every layer with hooks, (2) measure how much a layer turns a token's representation with the cosine
# similarity of consecutive states, and (3) tell a layer that rewrites image tokens from one that carries
# them forward.
#
# **Question.** Does the language decoder rewrite the image tokens layer after layer, or does it carry
# them forward nearly unchanged until late layers?
#
# **Method.** Every decoder layer $l$ reads the {term}`residual stream` $H^{(l-1)}$ and writes $H^{(l)}$.
# For each token $t$ we compare its state before and after layer $l$ with the cosine similarity
#
# $$\text{CosSim}(t, l) = \frac{H_t^{(l-1)} \cdot H_t^{(l)}}{\|H_t^{(l-1)}\|\,\|H_t^{(l)}\|},$$
#
# average it over the vision tokens of a sample, then over samples ($\text{AvgSim}^{(l)}$; the paper's
# eq. 1 names the same pair of states by the layer before). A value near 1 means the layer barely turned
# the token's direction; a drop means the layer transformed it. We do the same for the text tokens,
# which the paper does not show, as a reference.
#
# We read $H^{(0)}$ (the decoder's input, image features already merged in) and each layer's raw output
# in one observation pass (`vlmlib.observation`, shared with chapters 2, 4 and 6), which reduces them to
# per-sample means on the fly. We never use the final-norm output that transformers returns as its last
# hidden state: a norm is not a layer's update.
#
# **How we count layers.** The figures and tables number the layers from 0, as the paper's figures do:
# the point of the layer numbered 0 compares the decoder's input $H^{(0)}$ with the first layer's output
# $H^{(1)}$ ($l = 1$ above). The paper's text counts from 1 ("layers 1-10"): its layers 1-10 and 11-18
# are our 0-9 and 10-17.
#
# **Paper's finding (PaliGemma-3B, 100 PixelProse images).** Similarity stays high in layers 1-10 and
# drops in layers 11-18.

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
# ```{glue:figure} avgsim
# ---
# alt: >-
#   Line plot of the mean cosine similarity between each decoder layer's input and output, one line
#   for vision tokens and one for text tokens, with a band of one standard error.
# ---
# How much each decoder layer turns the tokens it reads: the mean cosine similarity of a token's state
# before and after the layer (AvgSim), for vision and text tokens. A value near 1 means the layer barely
# changed the token's direction. Bands: one standard error of the mean across samples (`band="std"`:
# the spread across samples); the paper gives no spread.
# ```
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
#   all image patches, with a band of one standard error.
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

# %% [markdown]
# ## What this run shows
#
# Our numbers, then the verdict of each claim of the paper this chapter answers, by the explicit rules
# of the [What holds](../what-holds.md) page. Every number of this page is in its results file,
# {download}`01_representations.json <01_representations.json>`.

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
}, points)

# %% [markdown]
# ## Exercises
#
# Each runs on the organisms in seconds; open a solution only after trying.
#
# 1. **Does the late change depend on what the image holds?** Compare AvgSim of the vision tokens per
#    layer for images with one or two objects and for images with five or six. (`Sample.answer` holds the
#    count; `observe(lm, subset, readings=("cosine",))` reads AvgSim.)
# 2. **Check the residual identity yourself.** With `vlmlib.trace.Trace`, record the input of decoder
#    layer 1 (`"resid.0"`, the output of layer 0), its attention and MLP contributions (`"attn.1"`,
#    `"mlp.1"`) and its output (`"resid.1"`) for one sample, and show that input + attention + MLP equals
#    the output.

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
from vlmlib import observe

by_count = {"1-2 objects": [s for s in samples if s.answer in ("1", "2")],
            "5-6 objects": [s for s in samples if s.answer in ("5", "6")]}
rows = ["| image | n | " + " | ".join(f"layer {i}" for i in range(lm.num_layers)) + " |",
        "|---|---|" + "---|" * lm.num_layers]
for name, subset in by_count.items():
    if subset:
        o = observe(lm, subset, readings=("cosine",), batch_size=batch_size, progress=False)
        rows.append(f"| {name} | {len(subset)} | "
                    + " | ".join(f"{v:.2f}" for v in o.mean("decoder.cosine.vision")) + " |")
page.show_markdown("\n".join(rows))

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2
from vlmlib import Trace

inputs = lm.encode_samples(samples[:1])
with Trace(lm, ["resid.0", "attn.1", "mlp.1", "resid.1"]) as tr:
    lm.forward(inputs)
gap = (tr["resid.0"] + tr["attn.1"] + tr["mlp.1"] - tr["resid.1"]).abs().max().item()
largest = tr["resid.1"].abs().max().item()
page.show_markdown(f"Largest |input + attention + MLP − output| in layer 1: {fmt.decimal(gap, 2)}, against a "
                   f"largest state entry of {fmt.decimal(largest, 2)}: equal to float precision.")
