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
from vlmlib.paper.format import count
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
# **Learning objectives.** After this chapter you can (1) patch whole residual states, not just one
# sublayer's output, (2) reason about which patched pairs can still matter downstream (and check it),
# and (3) compare how sensitive the decoder and the vision tower are to depth, on a measure that
# means the same for a saturated model and for the paper's.
#
# **Question.** Can the last layers be skipped? If the states an earlier layer produced are written
# over the last three layers' outputs, does the model still find its answer? The paper asks it of the
# language decoder at text positions and of the vision tower, and finds an asymmetry: text states are
# not interchangeable across depth, vision states largely are.
#
# **Method.** The same two-run patching as in chapter 3, on whole layer outputs instead of attention
# outputs:
#
# - *Decoder, text positions (the paper's "Text")*: the outputs $H^{(l)}$ of the source decoder layers,
#   recorded in a clean run, are written over the outputs of the last three decoder layers at the text
#   positions, paired in order (the first source onto the third-to-last layer, ...).
# - *Vision tower (the paper's "Vision")*: the outputs of source vision-encoder layers are written over
#   the tower's own last three layers, at every patch (the tower holds only image patches; for Qwen2-VL
#   these are its packed patches, before the 2x2 merge). The projector then reads the patched tower.
# - *Decoder, vision positions (beyond the paper)*: as the first, at the image-token positions.
#
# As in chapter 3, each sample's target is scored at the final position, clean and patched: its logit,
# its log-probability (the paper's loss is its negative; a multi-token answer is scored over all its
# tokens, teacher-forced), the logit difference to the best other token, and top-1 accuracy; under two
# conditions: **answer** (the dataset's answer, which the organisms give with near certainty) and
# **low-rank** (the paper-like regime: a wrong count, the next one in the answer set, wrapping; the
# paper's targets sat at 15-20 nats of loss).
#
# **The verdict's measure.** Rows are compared with the paper on **Δ log p(target)** (the paper's value is
# clean loss − patched loss), with paired t tests and Holm's correction {cite:p}`holm1979simple` over all
# compared rows at α = 0.05; only resolved rows count. The sign of a raw logit shift does not compare across
# regimes: Table 3's vision rows lower the logit (−0.28 to −0.99) while the loss falls too (Δ log p +0.16 to
# +1.50). The paper's asymmetry (E.1.4) is read on the same measure: how far text-position patches move log
# p(target) against how far vision-tower patches move it.
#
# **What a front patch reduces to.** Writing a whole layer output replaces everything computed before it at
# those positions. For the decoder at text positions, the final position's last-layer output is overwritten
# by the clean output of the *last* source layer, so the patched prediction is the model's own unembedding
# (final norm + LM head) applied to that earlier state, a {term}`logit lens`
# {cite:p}`nostalgebraist2020logitlens`: the other pairs cannot matter. For the vision tower the same holds:
# the tower ends with the last source layer's clean state. We check this below by running the last pair
# alone. At vision positions in the decoder it does not hold: the patched states are read by the final
# token's attention in the last layers.
#
# **How we read the paper.**
# - *Layer numbers*: 0-based module indices; the source groups 2-4, 5-7, 7-9, 10-12 and the last three
#   layers (15-17) of PaliGemma's 18-layer decoder. (E.1.1 names 2-4, 7-9 "mid" and 10-12; Table 3
#   also has 5-7: we run all four.) The paper applies the same literal groups to Qwen2-VL's 28-layer
#   decoder and to both vision towers (SigLIP 27 layers, Qwen2-VL's ViT 32 blocks), with the last three
#   layers of each as targets. On those models (`groups="auto"`, the default) we use exactly these
#   indices; on any other depth we scale them (`vlmlib.paper.groups`), and the page says which. The paper's
#   5-7 and 7-9 share layer 7; scaled groups may share layers the same way (each source is a separate
#   configuration), but never a layer with the target group, and no two sources are the same layers.
#   A part too shallow for four different sources (fewer than 5 layers, as the organisms' 4-layer
#   vision towers) leaves out 5-7, the group only Table 3 has, and the page says so.
# - *Target token*: the ground-truth answer (the dataset's answer when it has one, else the clean top-1).
#
# **Paper's finding.** PaliGemma: text front patching collapses the target logit (12.8 to about 0-3,
# loss up to 24-33); vision-tower front patching lowers it by 0.3-1.0 and even lowers the loss.
# Qwen2-VL: text patching collapses the logit to about 1-2.3 (yet its loss *falls*, from 19.6 to
# 10-12); vision-tower patching moves it by at most +0.65 (2-4), otherwise by about −0.3.


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
# ```{glue:figure} patching
# ---
# alt: >-
#   Grouped bar charts, one panel per condition and one for the paper: for each pair of source layers,
#   the change in the target's log-probability when whole layer outputs are patched in the vision tower,
#   at text positions or at vision positions of the decoder.
# ---
# How much each front patch moves the answer: the change in the target token's measure (the verdict's
# measure, named on the axis) for each choice of source layers, by where the patch writes; ours with one
# standard error per condition, the paper's below (it reports no spread).
# ```

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

# %% [markdown]
# ## What this run shows
#
# Our numbers, then the verdict of each claim of the paper this chapter answers, by the explicit rules
# of the [What holds](../what-holds.md) page. Every number of this page is in its results file,
# {download}`07_front_patching.json <07_front_patching.json>`.

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
}, points)

# %% [markdown]
# ## Exercises
#
# 1. **Depth in the decoder.** Front-patch the decoder's text positions from each single layer $l$
#    before the final group (sources $(l, l, l)$ would repeat a layer: use the group of three layers
#    ending at $l$) on the first 32 samples. From which source depth does top-1 accuracy survive?
# 2. **Why the last pair suffices.** In your own words: why can a whole-residual patch at text positions
#    onto the last three layers reduce to its last pair, but not at the image positions? Check the
#    claim with the table of the last-pair check above.

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
final = tuple(decoder_plan.groups["final"])
starts = range(0, final[0] - len(final) + 1)
sweep = [Patch("resid", tuple(range(s, s + len(final))), final, "text", f"{s}-{s + len(final) - 1}")
         for s in starts]
swept = patch_experiment(lm, samples[:32], sweep, batch_size=batch_size, conditions="answer").rows()
show_markdown("| sources | patched top-1 | Δ log p |\n|---|---|---|\n" + "\n".join(
    f"| {r['label']} | {r['patched_acc']:.2f} | {r['delta_logprob']:+.2f} ± {r['delta_logprob_se']:.2f} |"
    for r in swept))

# %% [markdown]
# ```{admonition} Solution 2
# :class: dropdown
# The last pair writes a clean state over the last layer's output at the text positions, the final
# position included, and the logits read only that output: whatever the earlier pairs changed upstream
# is overwritten before it can reach them. At the image positions the last pair overwrites only image
# states; the final position's own state comes from attention in the target layers, which reads the
# image states the earlier pairs wrote. The check above shows a gap of 0 where the argument holds.
# ```
