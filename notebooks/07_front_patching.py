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
# # 7. Front patching: earlier layers in place of the last three
#
# *Paper Appendix E, Table 3 (PaliGemma-3B) and Table 4 (Qwen2-VL-2B).*

# %% tags=["parameters", "remove-cell"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 200
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "07_front_patching.json"  # where this chapter writes its numbers
system_prompt: str | None = None  # Qwen2-VL: a system turn before the image (None: none, as the paper ran it)
task_prefix = ""  # PaliGemma: task prefix before the question, e.g. "answer en " (none, as the paper ran it)
max_pixels: int | None = None  # Qwen2-VL: the image processor's pixel budget (None: the processor's default)
question: str | None = None  # what every prompt asks (None: the dataset's own, else the counting question)
image_size: int | None = None  # image side in pixels (None: what the model expects: 448 for PaliGemma-448)
groups: str | dict = "auto"  # decoder groups: "auto" ("paper" on the paper's models, else "scaled") or a dict
vision_groups: str | dict = "auto"  # vision-tower groups, same choices (scaled by the tower's depth)
sources = ["2-4", "5-7", "7-9", "10-12"]  # source groups, by the paper's names; targets: "final"
decoder_positions = ["text", "vision"]  # "text" is the paper's; "vision" goes beyond it
target = "auto"  # answer condition's target: "answer", "top1", or "auto" (answer when the dataset has one)
conditions = "auto"  # "answer", "low-rank" (wrong answer, paper-like), a list, "auto" (both if answers exist)
verdict_measure = "delta_logprob"  # measure compared with the paper: "delta_logprob", "delta" or "delta_loss"
max_rows = 32  # rows per patched forward pass (batch x configurations stacked); raise it on a GPU
counterfactual_pairs = 64  # images paired with a partner one object apart (counterfactual patching; 0: none)

# %% tags=["remove-input"]
from vlmlib import Patch, patch_experiment
from vlmlib.paper import counterfactual, figures, setup
from vlmlib.paper.chapters import front_patching
from vlmlib.paper.format import count, percent
from vlmlib.paper.page import show_markdown
from vlmlib.paper.patching import (
    clean_table,
    compare_with_paper,
    comparison_table,
    delta_figure,
    markdown_table,
    paper_markdown,
)

run = setup("07_front_patching", globals())
lm, samples, batch_size, max_rows = run.lm, run.samples, run.params["batch_size"], run.params["max_rows"]
sources, decoder_positions = run.params["sources"], run.params["decoder_positions"]
decoder_plan, tower_plan, paper = run.extra["decoder_plan"], run.extra["tower_plan"], run.extra["paper"]

# %% [markdown]
# **Question.** Can the last layers be skipped: if an earlier layer's states are written over the last three
# layers' outputs, does the model still find its answer? The paper asks it of the decoder at text positions
# and of the vision tower, and finds an asymmetry.
#
# ```{glue:figure} patching
# ---
# alt: >-
#   Grouped bar charts, one panel per condition and one for the paper: for each pair of source layers,
#   the change in the target's log-probability when whole layer outputs are patched in the vision tower,
#   at text positions or at vision positions of the decoder.
# ---
# {glue:md}`result`
#
# How much each front patch moves the answer: the change in the target token's measure (the verdict's
# measure, named on the axis) for each choice of source layers, by where the patch writes; ours with one
# standard error per condition, the paper's below (it reports no spread).
# ```
#
# ## What this run shows
#
# ```{glue:md} conclusion
# :format: myst
# ```
#
# Every number of this page is in its results file,
# {download}`07_front_patching.json <07_front_patching.json>`;
# the [What holds](../what-holds.md) page states the rule behind each verdict.
#
# ## Method
#
# The two-run patching of chapter 3, on whole layer outputs: the states of earlier layers are written over
# the last layers' outputs, at text positions in the decoder and over the vision tower's own layers; we
# compare how much the answer's log-probability and accuracy move. The whole method, how we read the paper
# and how the library implements it: {ref}`How it works, chapter 7 <how-07>`.

# %% tags=["remove-input"]
show_markdown(f"**Layer groups used.** {decoder_plan.describe()}.\n\n{tower_plan.describe()}.")

# %% [markdown]
# ## The paper's table
#
# As transcribed from the paper (means over 100-200 PixelProse images; no spread reported). The last
# column is derived: Δ log p(target) = clean loss − patched loss.

# %% tags=["remove-input"]
if paper:
    show_markdown(f"**{paper['source']}**, {paper['model']}\n\n" + paper_markdown(paper))
else:
    show_markdown(f"The paper reports no front-patching table for the {lm.family.name} family.")

# %% [markdown]
# ## Our run
#
# First the clean run's targets: mean ± one standard error over samples (for top-1 accuracy, the
# standard error of a proportion, $\sqrt{p(1-p)/n}$). Then, per condition, the shifts: the per-sample
# differences patched − clean, averaged, with the standard error of the paired differences (for
# Δ top-1 too). *where*: *tower* = the vision tower (the paper's "Vision"), *text* = decoder at text
# positions (the paper's "Text"), *vision* = decoder at image-token positions.

# %% tags=["hide-input"]
patches = front_patching.chapter_patches(decoder_plan, tower_plan, sources, decoder_positions)
result = patch_experiment(lm, samples, patches, batch_size=batch_size, target=target, max_rows=max_rows,
                          conditions=conditions)
rows = result.rows()
answers_note = (f" Low-rank targets come from the answer set {', '.join(result.answers)}."
                if "low-rank" in result.conditions else "")
show_markdown(f"{len(patches)} configurations × {result.n_samples} samples × "
              f"{count(len(result.conditions), 'condition')}.{answers_note}\n\n" + clean_table(rows))

# %% tags=["hide-input"]
for condition in result.conditions:
    show_markdown(f"**Condition: {condition}.**\n\n" + markdown_table(rows, condition))

# %% tags=["hide-input", "remove-output"]
figures.show(delta_figure(rows, paper, title=lm.name, measure=verdict_measure), "patching")

# %% [markdown]
# ## Against the paper
#
# Each of our rows beside the paper's row for the same configuration, on the verdict's measure, with
# the Holm-adjusted p-value of our shift. *reads*: "paper's sign" or "opposite sign" for rows resolved
# after correction, "unresolved" otherwise.

# %% tags=["remove-input"]
comparison = compare_with_paper(rows, paper, measure=verdict_measure) if paper else []
tables = [f"**Condition {c}.**\n\n" + comparison_table(comparison, c) for c in result.conditions
          if any(x["condition"] == c for x in comparison)]
show_markdown("\n\n".join(tables) if tables else "No paper rows to compare with for this family.")

# %% [markdown]
# ## Check: the last pair alone
#
# Where a front patch reduces to its last pair (vision tower; decoder at text positions), running only
# that pair must give the same patched logits. At the decoder's vision positions the earlier pairs
# matter: the last layers' attention reads the patched image states. An identity either holds or not,
# so the check runs on the first 32 samples.

# %% tags=["hide-input"]
gaps = front_patching.last_pair_gaps(lm, samples, patches, result, n_checked=32, batch_size=batch_size,
                                     target=target, max_rows=max_rows)
show_markdown(front_patching.last_pair_table(gaps))

# %% [markdown]
# ## Counterfactual patching: the field's protocol
#
# As in [chapter 3](03_attention_patching.ipynb), each image is paired with a partner one object apart
# (so the counts differ by one), and one site of the original image's run is written into the partner's
# run; here the site is the whole residual stream, the output of one decoder layer, at one class of
# positions. Recovery 1 means that layer's states at those positions carry everything that tells the
# two images apart, 0 that they carry none of it. Writing the whole residual at the image tokens of a
# late layer says whether the count still has to be read from the image there; at the final position,
# from which layer on the answer is already settled.

# %% tags=["hide-input"]
cf_results, cf_points = counterfactual.show_section(
    lm, samples, "resid", counterfactual_pairs, batch_size, max_rows
)

# %% tags=["remove-input"]
points = front_patching.conclusion(rows, result.conditions, comparison, decoder_plan, tower_plan,
                                   verdict_measure)
points += cf_points
run.finish({
    "layer_groups": {"decoder": {k: list(v) for k, v in decoder_plan.groups.items()},
                     "vision_tower": {k: list(v) for k, v in tower_plan.groups.items()}},
    "group_mode": (decoder_plan.mode if decoder_plan.mode == tower_plan.mode
                   else f"decoder: {decoder_plan.mode}, vision tower: {tower_plan.mode}"),
    "group_plans": {"decoder": decoder_plan.to_dict(), "vision_tower": tower_plan.to_dict()},
    "layer_note": "0-based module indices; each source group written over the 'final' group, paired in order",
    "target": result.target,
    "conditions": {c: m.rule for c, m in result.conditions.items()},
    "answer_set": result.answers,
    "verdict_measure": verdict_measure,
    "seconds": result.seconds,
    "rows": rows,
    "last_pair_gap": gaps,
    "comparison": comparison,
    "paper": run.extra["paper_table"],
    "counterfactual": cf_results,
}, points, above=True)

# %% [markdown]
# ## Exercises
#
# The first exercise builds the chapter's measurement with the trace primitive; the others read its results.
# Each runs on the organisms in seconds; open a hint or a solution only after trying.
#
# 1. **Front-patch yourself** (harder ★★★, about 30 minutes). Write a function that runs each sample
#    twice: a clean run that records the outputs of the source layers, and a patched run that writes them
#    over the outputs of the target layers (paired in order) at the text positions only. It returns the mean
#    change of the answer's log-probability at the final position, patched minus clean. The check runs it on
#    the three layers before the final group, written over the final group. Fill in the function in the next
#    cell; the cell after the solution checks it against the library on four samples (until you fill it in,
#    it checks the solution).
#
#    ```{admonition} Hints
#    :class: dropdown
#    - A layer's whole output is the site `"resid.5"`; `Trace(lm, sites, edit=edit)` calls `edit(site,
#      value)` as the pass reaches each site and passes on what it returns.
#    - In the edit, copy the value, write the recorded source output at `lm.text_mask(inputs)[0]`, and
#      return the copy.
#    - `lm.last_token_logits(inputs)` gives the final position's logits;
#      `lm.answer_token_ids(sample.answer)[0]` is the answer token.
#    ```
#
# 2. **Depth in the decoder.** Front-patch the decoder's text positions from each single layer $l$
#    before the final group (sources $(l, l, l)$ would repeat a layer: use the group of three layers
#    ending at $l$) on the first 32 samples. From which source depth does top-1 accuracy survive?
# 3. **Why the last pair suffices.** In your own words: why can a whole-residual patch at text positions
#    onto the last three layers reduce to its last pair, but not at the image positions? Check the
#    claim with the table of the last-pair check above.

# %%
def my_front_patch(lm, samples, sources, targets):
    """Mean over samples of the answer's log-probability change (patched - clean) when the outputs of
    layers `sources` are written over those of `targets` at the text positions."""
    # TODO: a clean run recording "resid.s"; a patched run whose edit writes them over "resid.t"
    raise NotImplementedError


# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
import numpy as np
import torch

from vlmlib import Trace


def front_patch_solution(lm, samples, sources, targets):
    shifts = []
    for sample in samples:
        inputs = lm.encode_samples([sample])
        text, answer = lm.text_mask(inputs)[0], lm.answer_token_ids(sample.answer)[0]
        with torch.no_grad(), Trace(lm, [f"resid.{s}" for s in sources]) as clean:
            clean_logp = torch.log_softmax(lm.last_token_logits(inputs).float(), -1)[0, answer]
        source_of = {f"resid.{t}": f"resid.{s}" for s, t in zip(sources, targets)}

        def edit(site, value):
            value = value.clone()
            value[0, text] = clean[source_of[site]][0, text].to(value.dtype)
            return value

        with torch.no_grad(), Trace(lm, list(source_of), edit=edit):
            patched_logp = torch.log_softmax(lm.last_token_logits(inputs).float(), -1)[0, answer]
        shifts.append((patched_logp - clean_logp).item())
    return float(np.mean(shifts))


# %% tags=["remove-input"]
from vlmlib.paper import exercises

few = samples[:4]
final = tuple(decoder_plan.groups["final"])
before = tuple(range(final[0] - len(final), final[0]))
exercises.check(
    lambda lm, s: my_front_patch(lm, s, before, final),
    lambda lm, s: front_patch_solution(lm, s, before, final),
    lambda: patch_experiment(lm, few, [Patch("resid", before, final, "text", "before->final")],
                             target="answer", conditions="answer").rows()[0]["delta_logprob"],
    lm, few, "mean shift of the answer's log-probability", atol=1e-3)

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2
final = tuple(decoder_plan.groups["final"])
starts = range(0, final[0] - len(final) + 1)
sweep = [Patch("resid", tuple(range(s, s + len(final))), final, "text", f"{s}-{s + len(final) - 1}")
         for s in starts]
swept = patch_experiment(lm, samples[:32], sweep, batch_size=batch_size, conditions="answer").rows()
show_markdown("| sources | patched top-1 | Δ log p |\n|---|---|---|\n" + "\n".join(
    f"| {r['label']} | {percent(r['patched_acc'])} | {r['delta_logprob']:+.2f} ± "
    f"{r['delta_logprob_se']:.2f} |" for r in swept))
# accuracy survives: a drop of at most 5 points or two paired standard errors (chapter 8's rule)
kept = [-r["delta_acc"] <= max(0.05, 2 * r["delta_acc_se"]) for r in swept]
depth = next((k for k in range(len(swept)) if all(kept[k:])), None)
clean = swept[0]["clean_acc"]
if clean < 0.2:
    why = (f"The model gets only {percent(clean)} right unpatched, so accuracy has little to lose here; read "
           "the shift in log-probability instead.")
elif depth is None:
    why = (f"Accuracy (unpatched {percent(clean)}) survives from no source depth, not even the layers right "
           "before the final group: what the final layers themselves add at the text positions is needed for "
           "the answer.")
else:
    label = swept[depth]["label"]
    why = (f"Accuracy (unpatched {percent(clean)}) survives from source layers {label} on"
           + (", the decoder's first layers" if depth == 0 else ", and drops for shallower ones")
           + f": after layer {label.split('-')[-1]} the text positions, the final one among them, already "
           "hold the answer, and what the layers after it add there is not needed to get it right.")
show_markdown(why)

# %% [markdown]
# ```{admonition} Solution 3
# :class: dropdown
# The last pair writes a clean state over the last layer's output at the text positions, the final
# position included, and the logits read only that output: whatever the earlier pairs changed upstream
# is overwritten before it can reach them. At the image positions the last pair overwrites only image
# states; the final position's own state comes from attention in the target layers, which reads the
# image states the earlier pairs wrote. The check above tests exactly this: its gap must be 0 at the text
# positions (a gap there would mean the patch does not do what it says), and need not be at the image
# positions.
# ```
