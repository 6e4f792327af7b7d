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

# %% tags=["parameters", "remove-cell"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 200
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "06_residual_update.json"  # where this chapter writes its numbers
system_prompt: str | None = None  # Qwen2-VL: a system turn before the image (None: none, as the paper ran it)
task_prefix = ""  # PaliGemma: task prefix before the question, e.g. "answer en " (none, as the paper ran it)
max_pixels: int | None = None  # Qwen2-VL: the image processor's pixel budget (None: the processor's default)
question: str | None = None  # what every prompt asks (None: the dataset's own, else the counting question)
image_size: int | None = None  # image side in pixels (None: what the model expects: 448 for PaliGemma-448)
band = "sem"  # spread drawn around each mean: "sem" (standard error) or "std" (across samples)

# %% tags=["remove-input"]
from vlmlib.paper import figures, page, setup
from vlmlib.paper.chapters import residual_update

run = setup("06_residual_update", globals())
lm, samples = run.lm, run.samples

# %% [markdown]
# **Question.** How far does each decoder layer move the image tokens it carries, in absolute terms? And is
# that movement large or small against the size of the tokens' states?
#
# ```{glue:figure} update
# ---
# alt: >-
#   Two panels over the decoder layers. Top, line plot of the mean norm of each layer's update of vision
#   and of text tokens. Bottom, the same update divided by the mean norm of the stream, on a log scale.
# ---
# {glue:md}`result`
#
# How far each decoder layer moves the tokens it reads: (a) the mean norm of its update
# $\|H^{(l)} - H^{(l-1)}\|$ for vision and text tokens, (b) the update over the mean norm of the stream
# it changes, on a log scale. Bands: {glue:md}`band` (the paper gives no spread).
# ```
#
# ## What this run shows
#
# ```{glue:md} conclusion
# :format: myst
# ```
#
# Every number of this page is in its results file,
# {download}`06_residual_update.json <06_residual_update.json>`;
# the [What holds](../what-holds.md) page states the rule behind each verdict.
#
# ## Method
#
# For each layer we take the length (L2 norm) of the change it makes to each token's state, averaged over
# the image tokens (and the text tokens), and the same change relative to the state's own length. The whole
# method, how we read the paper and how the library implements it: {ref}`How it works, chapter 6 <how-06>`.

# %% [markdown]
# ## Update per layer (Figure 4)
#
# Top: the absolute update. Bottom: the update relative to the stream's size, on a log scale so that a
# large first-layer value does not flatten the other layers.

# %% tags=["hide-input", "remove-output"]
# One pass shared with chapters 1, 2 and 4 when the runner gives a cache (vlmlib.obscache).
obs = run.observe(("update", "vision_tower"))
relative = residual_update.relative_update(obs)  # a layer's update / the mean norm of its input, per modality
figures.show(figures.update_panels_figure(obs, relative, band=band), "update")

# %% [markdown]
#
# ## Beside the paper
#
# The paper describes Figure 4 in words; we describe our curve the same way: the first layer, the
# middle layers and the final layers (the paper's last 3 of 18, scaled to our depth).

# %% tags=["remove-input"]
paper = run.paper_values("section_2_5_update")
ours = residual_update.summary(
    obs.mean("decoder.update.vision"), obs.sem("decoder.update.vision"), lm.family.name
)
L, k = lm.num_layers, len(ours["final_layers"])
final = f"{ours['final_layers'][0]}-{ours['final_layers'][-1]}" if k > 1 else str(ours["final_layers"][0])
page.show_markdown("\n".join([
    "| | paper (PaliGemma-3B) | ours: mean update of vision tokens |", "|---|---|---|",
    f"| first layer | high initial processing at layer 0 | {ours['first_layer']:.3g} ± "
    f"{ours['first_layer_sem']:.2g} (layer 0) |",
    f"| middle layers | a drop for layers 1-10 | {ours['middle_mean']:.3g} (layers 1-{L - k - 1}) |",
    f"| final layers | spikes in layers 15-17 | {ours['final_layers_mean']:.3g} (layers {final}) |",
    f"| highest / lowest | – | layer {ours['highest_layer']} / layer {ours['lowest_layer']} |",
]))

# %% [markdown]
# ## The vision tower's own layers

# %% tags=["hide-input", "remove-output"]
figures.show(figures.tower_lines_figure(obs, "vision_tower.update.all", "mean norm of the update",
                                        "Update inside the vision tower", band=band), "tower-update")

# %% [markdown]
# ```{glue:figure} tower-update
# ---
# alt: >-
#   Line plot of the mean norm of each vision-tower layer's update of the image patches, with a shaded
#   band of its spread.
# ---
# Inside the vision encoder: the mean norm of what each of its layers adds to the image patches.
# ```

# %% [markdown]
# ## The last layer at image positions
#
# The last decoder layer's output at image positions feeds nothing: no later layer reads it, and only
# the final position's output reaches the answer, so no loss trains it (in the organisms and in the
# paper's models alike). A spike of the image tokens' update in the last layer may therefore say
# nothing about how the model answers. The verdict below is decided twice, on every layer and
# without the last one; if the two disagree, it is *not robust*.

# %% tags=["remove-input"]
points = [
    f"Vision tokens move by {ours['first_layer']:.3g} ± {ours['first_layer_sem']:.2g} at layer 0, "
    f"{ours['middle_mean']:.3g} on average in the middle layers and {ours['final_layers_mean']:.3g} in the "
    f"final layers ({final}); ± is one standard error over {obs.n_samples} samples.",
    f"The largest update is at layer {ours['highest_layer']}, the smallest at layer {ours['lowest_layer']}.",
    f"Relative to the stream's size, updates of vision tokens range {relative['vision'].min():.2f}-"
    f"{relative['vision'].max():.2f}.",
]
run.finish({
    "layers": list(range(lm.num_layers)),
    "layer_note": "layer i is the module layers[i] (0-based), writing H^(i+1) from H^(i)",
    "update": obs.summary("decoder.update."),
    "norm": obs.summary("decoder.norm."),
    "relative_update": relative,
    "vision_tower": obs.summary("vision_tower.update."),
    "summary": ours,
    "paper": paper,
}, points, above=True)

# %% [markdown]
# ## Exercises
#
# The first exercise builds the chapter's measurement with the trace primitive; the others read its results.
# Each runs on the organisms in seconds; open a hint or a solution only after trying.
#
# 1. **Measure the update yourself** (easy ★☆☆, about 15 minutes). Write a function that returns, for
#    each decoder layer, the mean L2 norm of the change the layer makes to each image token's state (its
#    output minus its input), averaged over a sample's image tokens, then over samples: the vision curve of
#    the chapter's first figure. Fill in the function in the next cell; the cell after the solution checks it
#    against the library on four samples (until you fill it in, it checks the solution).
#
#    ```{admonition} Hints
#    :class: dropdown
#    - The site `"embed.0"` is the decoder's input and `"resid.3"` the output of the layer numbered 3, so
#      layer 3 reads `"resid.2"` and writes `"resid.3"`.
#    - Encode one sample with `lm.encode_samples([sample])` and run `lm.forward(inputs)` inside `with
#      Trace(lm, sites) as tr:`.
#    - `lm.vision_mask(inputs)` is true at the image tokens; `(after - before).norm(dim=-1)` gives one
#      distance per token.
#    ```
#
# 2. **Do attention and the MLP push the same way?** The update is $\Delta_\text{Attn} + \Delta_\text{MLP}$,
#    so its norm is at most $\|\Delta_\text{Attn}\| + \|\Delta_\text{MLP}\|$, with equality only when the two
#    point the same way. Compute the ratio per layer for vision tokens (read `contributions` and `update` in
#    one `observe` pass).
# 3. **Relative to size.** Which layer moves text tokens the most relative to their size, and is it the
#    layer with the largest absolute update?

# %%
def my_update(lm, samples):
    """One number per decoder layer: how far it moves the image tokens' states (mean L2 norm)."""
    # TODO: trace "embed.0" and "resid.0" ... "resid.{L-1}"; norm of consecutive differences at image tokens
    raise NotImplementedError


# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
import numpy as np
import torch

from vlmlib import Trace


def update_solution(lm, samples):
    sites = ["embed.0"] + [f"resid.{layer}" for layer in range(lm.num_layers)]
    per_sample = []
    for sample in samples:
        inputs = lm.encode_samples([sample])
        with torch.no_grad(), Trace(lm, sites) as tr:
            lm.forward(inputs)
        image = lm.vision_mask(inputs)[0]
        states = [tr[s][0, image].float() for s in sites]
        per_sample.append([(b - a).norm(dim=-1).mean().item() for a, b in zip(states, states[1:])])
    return np.mean(per_sample, axis=0)


# %% tags=["remove-input"]
from vlmlib import observe
from vlmlib.paper import exercises

few = samples[:4]
exercises.check(my_update, update_solution,
                lambda: observe(lm, few, readings=("update",), progress=False).mean("decoder.update.vision"),
                lm, few, "updates per layer")

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2
from vlmlib.paper.format import layer_list

both = observe(lm, samples[:64], readings=("contributions", "update"), batch_size=batch_size, progress=False)
ratio = both.mean("decoder.update.vision") / (both.mean("decoder.attn_norm.vision")
                                              + both.mean("decoder.mlp_norm.vision"))
# two pushes at right angles give at least 0.71 (1/√2, at equal sizes): below it they must partly oppose
aligned = [i for i, v in enumerate(ratio) if v >= 0.9]
opposed = [i for i, v in enumerate(ratio) if v < 0.71]
between = [i for i in range(len(ratio)) if i not in aligned + opposed]
said = []
if aligned:
    said.append(f"In {layer_list(aligned)} the ratio is 0.9 or more: attention and the MLP push the image "
                "tokens the same way, or one of them is small beside the other.")
if opposed:
    said.append(f"In {layer_list(opposed)} it is below 0.71, less than two pushes at right angles could "
                "give: there the two partly cancel, one undoing some of what the other writes.")
if between:
    rest = "the other layers" if said else "every layer"
    said.append(f"In {rest} ({layer_list(between)}) it lies between 0.71 and 0.9: the two push in different "
                "directions, but the ratio alone cannot say whether they also oppose, since that depends on "
                "how unequal their sizes are too.")
page.show_markdown("‖update‖ / (‖attention‖ + ‖MLP‖) for vision tokens, per layer: "
                   + ", ".join(f"{v:.2f}" for v in ratio) + ". " + " ".join(said))

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 3", "code_prompt_hide": "Hide solution 3"}
# Solution 3
text_update = obs.mean("decoder.update.text")
most_relative, most_absolute = int(relative["text"].argmax()), int(text_update.argmax())
size = obs.mean("decoder.norm.text")[:-1]  # the mean length of the state each layer reads
page.show_markdown(
    f"Relative to their size, text tokens move most at layer {most_relative}; in absolute terms at layer "
    f"{most_absolute}. "
    + ("The same layer: its update is large in itself, not only against a short state."
       if most_relative == most_absolute else
       f"Not the same layer: the state layer {most_absolute} reads is "
       f"{size[most_absolute] / size[most_relative]:.1f} times as long as the one layer {most_relative} "
       "reads, and the same push changes a long state less. "
       "An absolute update says how much a layer writes, a relative one how much it changes the token."))
