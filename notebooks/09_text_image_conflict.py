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
# # 9. When text and image disagree
#
# *Beyond the paper: its central claim, textual dominance ("linguistic priors can override conflicting
# visual evidence", abstract and conclusion), put to the test with prompts whose text contradicts the image.*

# %% tags=["parameters", "remove-cell"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "scenes"  # a counting dataset: "scenes", "shapes", or a local imagefolder path with count answers
n_samples = 200
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "09_text_image_conflict.json"  # where this chapter writes its numbers
system_prompt: str | None = None  # Qwen2-VL: a system turn before the image (None: none, as the paper ran it)
task_prefix = ""  # PaliGemma: task prefix before the question, e.g. "answer en " (none, as the paper ran it)
max_pixels: int | None = None  # Qwen2-VL: the image processor's pixel budget (None: the processor's default)
question: str | None = None  # what every prompt asks after the hint (None: the dataset's own question)
image_size: int | None = None  # image side in pixels (None: what the model expects)
knockout_samples = 100  # images whose false-hint prompts are knocked out (a sweep costs 4 passes per layer)
counterfactual_pairs = 64  # agreement/conflict pairs patched layer by layer (0: none)
max_rows = 128  # rows per forward pass (samples x interventions stacked); raise it on a GPU

# %% tags=["remove-input"]
from dataclasses import replace

import numpy as np

from vlmlib import counterfactual_experiment, knockout_experiment, layer_sweep
from vlmlib.hints import hint_experiment, hint_mask, variant_sets
from vlmlib.lens import lens_token_logits
from vlmlib.paper import figures, page, setup
from vlmlib.paper.chapters import conflict
from vlmlib.paper.figures import COLUMN_WIDTH, LAYER_AXIS, book_figure, line_style
from vlmlib.paper.format import md_table, percent, points

run = setup("09_text_image_conflict", globals())
lm, samples, L = run.lm, run.samples, run.lm.num_layers
batch_size, max_rows = run.params["batch_size"], run.params["max_rows"]
training = run.extra["hint_training"]


def hint_positions(lm, inputs, batch):
    return hint_mask(lm, batch, inputs)


# %% [markdown]
# **Question.** The paper argues that because these models read the image late, a language prior can
# override what the image shows. When the prompt claims one count and the image shows another, which does
# the answer follow, and where in the model is the conflict decided?
#
# ```{glue:figure} conflict-outcomes
# ---
# alt: >-
#   Two panels. Left, bars of the share of answers that are right and the share that name the false hint's
#   count, for prompts with no hint, a true hint and a false hint. Right, against how many objects the false
#   hint is off, the share of answers that follow the hint and the share that follow the image.
# ---
# {glue:md}`result`
#
# What the answers follow. Left: the share of answers that are right, and that name the false hint's count,
# for the same images asked with no hint, a true hint and a false hint. Right: under the false hint, by how
# many objects the hint is off, the share of answers that follow the hint and the share that follow the
# image. Bars: one binomial standard error over images.
# ```
#
# ## What this run shows
#
# ```{glue:md} conclusion
# :format: myst
# ```
#
# Every number of this page is in its results file,
# {download}`09_text_image_conflict.json <09_text_image_conflict.json>`; the
# [What holds](../what-holds.md) page states the rule behind the verdict.
#
# ## Method
#
# Every image is asked three ways: with the question alone, with a **true hint** before it ("There are 4
# objects ." when there are four), and with a **false hint** that claims another count. The
# **text-preference rate** is the share of answers under the false hint that name the hint's count; the
# claim holds when, on the same images, answers follow the hint more often than the image, by more than
# two standard errors of the paired difference. Where the conflict is decided is read three ways: the
# {term}`logit lens` at the final position, {term}`attention knockout` of the hint's or the image's
# tokens, and {term}`counterfactual patching` from the true-hint run into the false-hint run. The whole
# method and how the library implements it: {ref}`How it works, chapter 9 <how-09>`.

# %% tags=["remove-input"]
n_left = len(run.extra["left_out"])
notes = [f"Run on {len(samples)} images of the {run.params['dataset']} set"
         + (f" ({n_left} left out: counts the model has no token for)." if n_left else ".")]
notes.append(
    "What the model learnt: " + training["why"] + "."
    + (" It has no textual prior about counts to override." if training["seen"] is False else ""))
page.show_markdown(" ".join(notes))

# %% [markdown]
# ## (a) What the answers follow

# %% tags=["hide-input", "remove-output"]
preference = hint_experiment(lm, samples, batch_size=batch_size)
summary, by_size = preference.summary(), preference.by_disagreement()
kinds = conflict.KINDS

fig, (left, right) = book_figure(1, 2, figsize=(COLUMN_WIDTH, 3.6))
x = np.arange(len(kinds))
width = 0.38
for k, (measure, label) in enumerate((("correct", "right (follows the image)"),
                                      ("follows_claim", "names the false hint's count"))):
    left.bar(x + (k - 0.5) * width, [summary[kind][measure] for kind in kinds], width,
             yerr=[summary[kind][measure + "_se"] for kind in kinds], capsize=2, label=label,
             hatch=("", "//")[k], color=("C0", "C3")[k])
left.set_xticks(x, ["none", "true", "false"])
left.set(xlabel="hint in the prompt", ylabel="share of answers", ylim=(0, 1.05), title="three prompts")
left.legend()
sizes = sorted(by_size)
for k, (measure, label, colour) in enumerate((("follows_claim", "follows the hint", "C3"),
                                              ("correct", "follows the image", "C0"))):
    means = [by_size[d][measure] for d in sizes]
    # the line carries the legend (its style and marker); the error bars are drawn bare beside it
    right.plot(sizes, means, color=colour, label=label, ls=("-", "--")[k], marker="os"[k], ms=4)
    right.errorbar(sizes, means, yerr=[by_size[d][measure + "_se"] for d in sizes], capsize=2,
                   fmt="none", ecolor=colour)
right.set(xlabel="objects the false hint is off", ylabel="share of answers", ylim=(-0.02, 1.05),
          title="under a false hint")
right.set_xticks(sizes)
right.legend()
figures.show(fig, "conflict-outcomes")

# %% [markdown]
# The same numbers by the size of the disagreement, with the number of images of each size:

# %% tags=["remove-input"]
page.show_markdown(md_table(
    ["hint off by", "images", "follows the hint", "follows the image", "hint's lead"],
    [[str(d), str(s["n"]), percent(s["follows_claim"], s["follows_claim_se"]),
      percent(s["correct"], s["correct_se"]), points(s["claim_minus_image"], s["claim_minus_image_se"])]
     for d, s in by_size.items()]))

# %% [markdown]
# ## (b) When the hint reaches the answer: the logit lens
#
# Each state $H^{(l)}$ at the final position is decoded as if it were the last layer's output; the curve is
# the logit of the true count minus that of the false hint's count. Under the false hint a curve below zero
# means the hint's count is ahead at that depth.

# %% tags=["hide-input", "remove-output"]
sets = variant_sets(samples)
pair_ids = np.stack([preference.true_ids, preference.claimed_ids], axis=1)
lens_logits = {kind: lens_token_logits(lm, sets[kind], pair_ids, batch_size=batch_size) for kind in kinds}
curves = conflict.lens_curves(lens_logits)
lens_summary = conflict.lens_summary(curves)

fig, ax = book_figure(figsize=(COLUMN_WIDTH, 3.4))
states = np.arange(L + 1)
for k, kind in enumerate(kinds):
    mean, sem = np.array(curves[kind]["mean"]), np.array(curves[kind]["sem"])
    ax.plot(states, mean, ms=4, label=conflict.KIND_NAMES[kind], **line_style(k))
    ax.fill_between(states, mean - sem, mean + sem, alpha=0.2)
ax.axhline(0, color="grey", lw=0.8)
if lens_summary["first_moved_state"] is not None:
    ax.axvline(lens_summary["first_moved_state"], color="grey", lw=0.8, ls=(0, (1, 3)))
ax.set(xlabel="state H(l), after l layers (0: the decoder's input)",
       ylabel="logit(true) − logit(false count)", title=f"{lm.name}: the answer's timeline")
figures.integer_ticks(ax)
ax.legend()
figures.show(fig, "conflict-lens")

# %% [markdown]
# ```{glue:figure} conflict-lens
# ---
# alt: >-
#   Line plot over the states of the decoder of the logit of the true count minus the logit of the false
#   hint's count at the final position, decoded by the logit lens, for prompts with no hint, a true hint and
#   a false hint; a dotted vertical line marks the first state where the false hint has moved it.
# ---
# When the hint reaches the answer: the logit of the true count minus that of the false hint's count at the
# final position, decoded from every state by the {term}`logit lens`, for the same images with no hint, a
# true hint and a false hint. The dotted line marks the first state where the false hint's curve lies below
# the true hint's by more than two paired standard errors. Bands: one standard error over images.
# ```

# %% [markdown]
# ## (c) What the answer reads: hiding the hint or the image
#
# Under the false hint, the hint's tokens or the image's are hidden from every other position, in one layer
# only (left) or in every layer from one on (right). Solid: the share of answers that follow the hint;
# dashed: the share that are right; the flat lines are the run without a knockout.

# %% tags=["hide-input", "remove-output"]
ko_samples = sets["conflict"][: run.params["knockout_samples"]]
knockouts = [ko for keys in ("hint", "image")
             for ko in layer_sweep(L, "all", schemes=("layer", "onwards"), keys=keys)]
ko_result = knockout_experiment(lm, ko_samples, knockouts, batch_size=batch_size, target="answer",
                                max_rows=max_rows, keys={"hint": hint_positions})
n_ko = len(ko_samples)
ko_rows = conflict.knockout_rows(ko_result, preference.true_ids[:n_ko], preference.claimed_ids[:n_ko])

fig, axes = book_figure(1, 2, figsize=(COLUMN_WIDTH, 3.8), sharey=True)
for col, (scheme, title) in enumerate((("layer", "one layer"), ("onwards", "every layer from one on"))):
    ax = axes[col]
    for k, keys in enumerate(("hint", "image")):
        rows = [r for r in ko_rows if r["keys"] == keys and r["scheme"] == scheme]
        first = [r["layers"][0] for r in rows]
        colour = ("C3", "C0")[k]
        ax.errorbar(first, [r["follows"] for r in rows], yerr=[r["follows_se"] for r in rows], color=colour,
                    capsize=2, ms=4, marker="os"[k], label=f"{keys} hidden: follows hint")
        ax.plot(first, [r["correct"] for r in rows], color=colour, ls="--", marker="os"[k], ms=3,
                mfc="none", label=f"{keys} hidden: right")
    ax.axhline(ko_rows[0]["clean_follows"], color="0.3", lw=1, label="no knockout: follows hint")
    ax.axhline(ko_rows[0]["clean_correct"], color="0.3", lw=1, ls=":", label="no knockout: right")
    ax.set(title=title, xlabel="first hidden layer", ylim=(-0.02, 1.05))
    figures.integer_ticks(ax)
axes[0].set_ylabel("share of answers")
handles, labels = axes[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
figures.show(fig, "conflict-knockout")

# %% [markdown]
# ```{glue:figure} conflict-knockout
# ---
# alt: >-
#   Two panels over the decoder layers: the share of answers that follow the false hint (solid) and that
#   are right (dashed) when the hint's tokens or the image's tokens are hidden from every other position in
#   one layer (left) or in every layer from one on (right), with the run without knockout as flat lines.
# ---
# What the answer reads: under a false hint, the hint's tokens or the image's hidden from every other
# position in one layer (left) or from a layer on (right), drawn at the first hidden layer. Solid: answers
# that follow the hint; dashed: answers that are right. Bars: one binomial standard error over images.
# ```

# %% tags=["remove-input"]
whole = [r for r in ko_rows if r["scheme"] == "onwards" and r["layers"][0] == 0]
page.show_markdown(md_table(
    ["hidden in every layer", "follows the hint", "change", "right", "change"],
    [[conflict.KEY_NAMES[r["keys"]], percent(r["follows"], r["follows_se"]),
      points(r["delta_follows"], r["delta_follows_se"]), percent(r["correct"], r["correct_se"]),
      points(r["delta_correct"], r["delta_correct_se"])] for r in whole]))

# %% [markdown]
# ## (d) Where the conflict is carried: patching agreement into conflict
#
# One layer's residual stream from the run with the true hint is written into the run with the false one, at
# one class of positions; the score is the true count's logit lead over the false hint's count, as a share of
# the way from the false-hint run (0) to the true-hint run (1).

# %% tags=["hide-input", "remove-output"]
n_pairs = min(run.params["counterfactual_pairs"], len(samples))
cf_dict, cf_rows = {"note": "not run (counterfactual_pairs = 0)"}, []
if n_pairs:
    # the conflict run's "answer" is the false count: the logit difference is true minus claimed in both runs
    cf_pairs = [(a, replace(c, answer=str(c.hint_count))) for a, c in zip(sets["agree"][:n_pairs],
                                                                        sets["conflict"][:n_pairs])]
    cf = counterfactual_experiment(lm, cf_pairs, kinds=("resid",), positions=conflict.PATCH_POSITIONS,
                                   batch_size=batch_size, max_rows=max_rows, differ="text",
                                   extra_positions={"hint": hint_positions})
    cf_dict, cf_rows = cf.to_dict(), cf.rows()
    layers_, mean, se = conflict.recovery_grid(cf_rows)
    fig, ax = book_figure(figsize=(COLUMN_WIDTH, 3.4))
    for k, position in enumerate(conflict.PATCH_POSITIONS):
        ax.plot(layers_, mean[position], ms=4, label=conflict.POSITION_NAMES[position], **line_style(k))
        ax.fill_between(layers_, mean[position] - se[position], mean[position] + se[position], alpha=0.2)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set(xlabel=LAYER_AXIS, ylabel="recovery", title=f"{lm.name}: residual stream patched")
    figures.integer_ticks(ax)
    ax.legend()
    figures.show(fig, "conflict-patching")
else:
    figures.show_absent("conflict-patching", "Counterfactual patching was not run (no pairs asked for).")

# %% [markdown]
# ```{glue:figure} conflict-patching
# ---
# alt: >-
#   Line plot over the decoder layers of the recovery when one layer's residual stream from the run with a
#   true hint is written into the run with a false hint, at the hint's tokens, at the image's tokens or at the
#   final position.
# ---
# Where the conflict is carried: the share of the true count's logit lead that comes back when one layer's
# residual stream is taken from the run with the true hint into the run with the false one, at the hint's
# tokens, the image's tokens or the final position (0: the false-hint run, 1: the true-hint run). Bands: one
# paired standard error over the pairs.
# ```

# %% tags=["remove-input"]
chapter_results = {
    "layers": list(range(L)),
    "layer_note": "knockout and patching rows name decoder layers from 0; lens state l is H(l), after "
                  "l layers",
    "hint_training": training,
    "left_out": run.extra["left_out"],
    "chance": 1 / 9,
    "preference": preference.to_dict(),
    "lens": {"states": list(range(L + 1)), **curves},
    "lens_summary": lens_summary,
    "knockout": {"n_samples": n_ko, "queries": "every other position", "seconds": ko_result.seconds},
    "knockout_rows": ko_rows,
    "counterfactual": cf_dict,
}
run.finish(chapter_results, conflict.conclusion_points(chapter_results, L), above=True)

# %% [markdown]
# ## Exercises
#
# The first exercise builds the chapter's measurement with the model's own forward pass; the others read
# its results. Each runs on the organisms in seconds; open a hint or a solution only after trying.
#
# 1. **Measure the hint's pull yourself** (medium ★★☆, about 20 minutes). Write a function that returns,
#    for each sample asked with a false hint, the logit of the true count minus the logit of the false
#    hint's count at the final position: the number the logit lens follows in figure (b), at the last
#    state. Below zero, the hint's count is ahead. Fill in the function in the next cell; the cell after the
#    solution checks it against the library on four samples (until you fill it in, it checks the solution).
#
#    ```{admonition} Hints
#    :class: dropdown
#    - `sets["conflict"]` holds the samples with their false hint in the prompt; a sample's true count is
#      `int(sample.answer)`, the hint's `sample.hint_count`.
#    - `lm.answer_token_ids(str(n))` gives the token ids of the count `n` (one token on the organisms).
#    - Encode one sample with `lm.encode_samples([sample])`; `lm.forward(inputs).logits[0, -1]` are the
#      logits at its final position (one sample: no padding after it).
#    ```
#
# 2. **Straight to the answer?** The knockouts above hide the hint from every other position. Hide it from
#    the final position only, in every layer, and compare the share of answers that follow the hint. Does the
#    answer read the hint directly, or through the positions between the hint and the answer?
# 3. **Where a true hint helps.** Compute, for each true count, the accuracy without a hint and with a true
#    hint. Does the hint help most where the image is hardest to count?

# %%
def my_hint_pull(lm, samples):
    """Per sample with a false hint: logit(true count) - logit(the hint's count) at the final position."""
    # TODO: encode each sample, run the model, read the final position's logits of the two counts
    raise NotImplementedError


# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
import torch


def hint_pull_solution(lm, samples):
    pulls = []
    for sample in samples:
        true_id = lm.answer_token_ids(sample.answer)[0]
        hint_id = lm.answer_token_ids(str(sample.hint_count))[0]
        with torch.no_grad():
            logits = lm.forward(lm.encode_samples([sample])).logits[0, -1].float()
        pulls.append((logits[true_id] - logits[hint_id]).item())
    return np.array(pulls)


# %% tags=["remove-input"]
from vlmlib.paper import exercises

exercises.check(my_hint_pull, hint_pull_solution, lambda: preference.logit_diff["conflict"][:4], lm,
                sets["conflict"][:4], "logit differences under the false hint", atol=1e-3)

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2
from vlmlib import Knockout

few = sets["conflict"][:48]
both = [Knockout(tuple(range(L)), queries, "onwards", "all layers", keys="hint")
        for queries in ("final", "all")]
found = conflict.knockout_rows(
    knockout_experiment(lm, few, both, batch_size=batch_size, target="answer", max_rows=max_rows,
                        keys={"hint": hint_positions}),
    preference.true_ids[:48], preference.claimed_ids[:48])
said = "; ".join(
    f"hidden from {'the final position' if r['queries'] == 'final' else 'every other position'}: "
    f"{percent(r['follows'], r['follows_se'])} follow the hint (no knockout: {percent(r['clean_follows'])})"
    for r in found)
final_only, everywhere = (next(r for r in found if r["queries"] == q) for q in ("final", "all"))
moved = {name: -r["delta_follows"] > 2 * r["delta_follows_se"]  # fewer answers follow it, resolved
         for name, r in (("final", final_only), ("all", everywhere))}
if moved["final"] and -final_only["delta_follows"] >= -0.5 * everywhere["delta_follows"]:
    why = ("Hiding the hint from the final position alone takes away at least half of what hiding it "
           "everywhere does: the answer reads the hint directly, in attention from the final position.")
elif moved["all"]:
    why = ("Hiding the hint from the final position alone takes away less than half of what hiding it "
           "everywhere does: the hint reaches the answer mostly through the positions in between (the "
           "question's tokens), which read it and pass it on, so a final-position knockout underestimates "
           "how much the answer depends on it.")
else:
    why = ("Neither knockout lowers the share beyond two standard errors on these images: the answer does "
           "not depend on reading the hint by attention here, so there is no route to locate.")
page.show_markdown(f"{said}. {why}")

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 3", "code_prompt_hide": "Hide solution 3"}
# Solution 3
from vlmlib.stats import proportion_se

right = {kind: preference.outcomes(kind)["correct"].astype(float) for kind in ("absent", "agree")}
counts = sorted(set(preference.true.tolist()))
page.show_markdown(md_table(
    ["true count", "images", "no hint", "true hint"],
    [[str(n), str(int((preference.true == n).sum()))]
     + [percent(*proportion_se(right[kind][preference.true == n])) for kind in ("absent", "agree")]
     for n in counts]))
# enough images per count to compare counts: the gain a true hint brings against the accuracy without it
kept = [n for n in counts if (preference.true == n).sum() >= 5]
without = np.array([right["absent"][preference.true == n].mean() for n in kept])
gain = np.array([right["agree"][preference.true == n].mean() for n in kept]) - without
if len(kept) >= 3 and without.std() > 0 and gain.std() > 0:
    r = float(np.corrcoef(without, gain)[0, 1])
    best = kept[int(gain.argmax())]
    page.show_markdown(
        f"A true hint helps most at {best} objects ({points(gain.max())}). Across the counts with at least 5 "
        f"images, the gain and the accuracy without a hint correlate at r = {r:+.2f}: "
        + ("the hint helps most where the image is hardest to count, as a prior should."
           if r < -0.5 else "no clear pattern: the hint's help does not follow how hard the image is."
           if r < 0.5 else "the hint helps most where the model already counts well, "
           "which a prior alone would not explain.")
        + " With a few images per count these are rough; rerun with more samples to firm them up.")
else:
    page.show_markdown("Too few images per count to compare the counts; rerun with more samples.")
