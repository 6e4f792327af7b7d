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
# # 3. Attention-output activation patching
#
# *Paper section 2.2, Table 1 (PaliGemma-3B); Appendix D, Table 2 (Qwen2-VL-2B).*

# %% tags=["parameters", "remove-cell"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 200
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "03_attention_patching.json"  # where this chapter writes its numbers
system_prompt: str | None = None  # Qwen2-VL: a system turn before the image (None: none, as the paper ran it)
task_prefix = ""  # PaliGemma: task prefix before the question, e.g. "answer en " (none, as the paper ran it)
max_pixels: int | None = None  # Qwen2-VL: the image processor's pixel budget (None: the processor's default)
question: str | None = None  # what every prompt asks (None: the dataset's own, else the counting question)
image_size: int | None = None  # image side in pixels (None: what the model expects: 448 for PaliGemma-448)
groups: str | dict = "auto"  # decoder groups: "auto" ("paper" on the paper's models, else "scaled") or a dict
vision_groups: str | dict = "auto"  # vision-tower groups for the tower-attention rows, same choices
directions = ["early->mid", "late->mid", "early->late", "mid->late", "early->final", "mid->final"]
positions = ["vision", "text"]  # decoder position sets to patch
tower_attention = True  # also patch attention inside the vision tower (Appendix D.2's reading of "Vision")
target = "auto"  # answer condition's target: "answer", "top1", or "auto" (answer when the dataset has one)
conditions = "auto"  # "answer", "low-rank" (wrong answer, paper-like), a list, "auto" (both if answers exist)
verdict_measure = "delta_logprob"  # measure compared with the paper: "delta_logprob", "delta" or "delta_loss"
max_rows = 32  # rows per patched forward pass (batch x configurations stacked); raise it on a GPU
counterfactual_pairs = 64  # images paired with a partner one object apart (counterfactual patching; 0: none)

# %% tags=["remove-input"]
from vlmlib import patch_experiment
from vlmlib.paper import counterfactual, figures, setup
from vlmlib.paper.chapters import attention_patching
from vlmlib.paper.format import count
from vlmlib.paper.page import show_markdown
from vlmlib.paper.patching import clean_table, comparison_table, delta_figure, markdown_table, paper_markdown

run = setup("03_attention_patching", globals())
lm, samples, batch_size, max_rows = run.lm, run.samples, run.params["batch_size"], run.params["max_rows"]
directions, positions = run.params["directions"], run.params["positions"]
decoder_plan, tower_plan, paper = run.extra["decoder_plan"], run.extra["tower_plan"], run.extra["paper"]

# %% [markdown]
# **Question.** Does the model need what attention computes in a given layer, or can another layer's
# attention output stand in for it? And does that differ between the image tokens and the text tokens?
#
# ```{glue:figure} patching
# ---
# alt: >-
#   Grouped bar charts, one panel per condition and one for the paper: for each patch direction, the
#   change in the target's log-probability when attention outputs are patched at vision positions, at
#   text positions, or inside the vision tower.
# ---
# {glue:md}`result`
#
# How much each attention-output patch moves the answer: the change in the target token's measure
# (the verdict's measure, named on the axis) for each direction, by where the patch writes; ours with
# one standard error per condition, the paper's below (it reports no spread).
# ```
#
# ## What this run shows
#
# ```{glue:md} conclusion
# :format: myst
# ```
#
# Every number of this page is in its results file,
# {download}`03_attention_patching.json <03_attention_patching.json>`;
# the [What holds](../what-holds.md) page states the rule behind each verdict.
#
# ## Method
#
# Every sample runs twice: a clean run records the attention outputs of the source layers, and a patched run
# writes them over the target layers' at image or text positions; we compare how much the answer's
# log-probability and accuracy move. The whole method, how we read the paper and how the library implements
# it: {ref}`How it works, chapter 3 <how-03>`.

# %% tags=["remove-input"]
used = [f"**Layer groups used.** {decoder_plan.describe()}."]
if tower_plan is not None:
    used.append(f"Vision-tower attention rows: {tower_plan.describe()}.")
show_markdown("\n\n".join(used))

# %% [markdown]
# ## The paper's table
#
# As transcribed from the paper (means over 100-200 PixelProse images; no spread reported). The last
# column is derived: Δ log p(target) = clean loss − patched loss.

# %% tags=["remove-input"]
if paper:
    show_markdown(f"**{paper['source']}**, {paper['model']}\n\n" + paper_markdown(paper))
else:
    show_markdown(f"The paper reports no attention-patching table for the {lm.family.name} family.")

# %% [markdown]
# ## Our run
#
# First the clean run's targets: mean ± one standard error over samples (for top-1 accuracy, the
# standard error of a proportion, $\sqrt{p(1-p)/n}$). Then, per condition, the shifts: each is the
# per-sample difference patched − clean, averaged, with the standard error of the paired differences
# (for Δ top-1 too: the paired standard error, not a proportion's). *where*: the decoder positions
# patched, or *tower attn*, attention inside the vision tower.

# %% tags=["hide-input"]
patches = attention_patching.chapter_patches(decoder_plan, tower_plan, directions, positions)
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
# after correction, "unresolved" otherwise. Rows the paper itself calls a minimal effect (vision
# early→mid and late→mid in Table 1; vision early→mid in Table 2) are compared as small, not by sign:
# "small, as the paper's" when our shift is within 0.1 nats (two standard errors included), "an effect
# where the paper saw none" when it is resolved beyond that. Decoder rows follow section 2.2's reading
# of the paper; tower-attention rows, Appendix D.2's, in a family of tests of their own.
#
# **Sign convention of the low-rank condition.** The paper's target was the right answer, which its
# models ranked low (15-20 nats of loss). Ours is a wrong count, which the organism ranks low, since it
# answers correctly with near certainty. A shift of the same sign is the same change of a low-ranked
# token's log-probability, not the same change in how often the model is right.

# %% tags=["remove-input"]
comparison, comparison_tower = attention_patching.comparisons(rows, paper, verdict_measure)
tables = []
for name, comp in (("decoder (section 2.2)", comparison),
                   ("vision-tower attention (Appendix D.2)", comparison_tower)):
    for condition in result.conditions:
        if any(c["condition"] == condition for c in comp):
            tables.append(f"**{name}, condition {condition}.**\n\n" + comparison_table(comp, condition))
show_markdown("\n\n".join(tables) if tables else "No paper rows to compare with for this family.")

# %% [markdown]
# ## Counterfactual patching: the field's protocol
#
# The paper's protocol writes one group of layers over another *within the same run*, so its result mixes
# what the patched activations carry with how different the two groups' representations are. The
# standard protocol of the field {cite:p}`zhang2024towards,heimersheim2024use` asks "where is the
# count carried?" directly. Each image is paired with a **partner that differs in one object** (one
# object taken away, or one added to a single-object image), so their counts differ by one and nothing
# else in the prompt or the image changes. The partner is run (the *corrupted* run), and what attention
# adds to the residual in one decoder layer, at one class of positions, is taken from the original
# image's run (the *clean* run) and written in. The score is the logit difference between the two
# answers at the final position,
# $LD = \text{logit}(\text{clean answer}) - \text{logit}(\text{corrupted answer})$, normalised as
# **recovery** $= (LD_{\text{patched}} - LD_{\text{corrupted}}) / (LD_{\text{clean}} -
# LD_{\text{corrupted}})$: 0 is the corrupted run's answer, 1 the clean run's. Spreads are paired
# standard errors over the pairs.

# %% tags=["hide-input"]
cf_results, cf_points = counterfactual.show_section(
    lm, samples, "attn", counterfactual_pairs, batch_size, max_rows
)

# %% tags=["remove-input"]
points = attention_patching.conclusion(rows, result.conditions, positions, comparison, comparison_tower,
                                       verdict_measure)
points += cf_points
run.finish({
    "layer_groups": {k: list(v) for k, v in decoder_plan.groups.items()},
    "group_mode": decoder_plan.mode,
    "group_plans": {"decoder": decoder_plan.to_dict(),
                    **({"vision_tower": tower_plan.to_dict()} if tower_plan is not None else {})},
    "layer_note": "0-based module indices; 'A->B' = sources A written over targets B, paired in order",
    "target": result.target,
    "conditions": {c: m.rule for c, m in result.conditions.items()},
    "answer_set": result.answers,
    "verdict_measure": verdict_measure,
    "seconds": result.seconds,
    "rows": rows,
    "comparison": comparison,
    "comparison_vision_tower": comparison_tower,
    "paper": run.extra["paper_table"],
    "counterfactual": cf_results,
}, points, above=True)

# %% [markdown]
# ## Exercises
#
# The first exercise builds the chapter's measurement with the trace primitive; the others read its results.
# Each runs on the organisms in seconds; open a hint or a solution only after trying.
#
# 1. **Patch attention outputs yourself** (harder ★★★, about 35 minutes). Write a function that runs
#    each sample twice: a clean run that records what attention adds in the source layers, and a patched run
#    that writes those outputs over the target layers' (paired in order), at the text positions only. It
#    returns the mean change of the answer's log-probability at the final position, patched minus clean. The
#    check runs it on the paper's early → late patch. Fill in the function in the next cell; the cell after
#    the solution checks it against the library on four samples (until you fill it in, it checks the
#    solution).
#
#    ```{admonition} Hints
#    :class: dropdown
#    - `Trace(lm, sites, edit=edit)` calls `edit(site, value)` for each site as the pass reaches it, and
#      passes on what it returns; `value` is (1, tokens, width) for an attention site such as `"attn.5"`.
#    - In the edit, copy the value, write the recorded source output at `lm.text_mask(inputs)[0]`, and
#      return the copy.
#    - `lm.last_token_logits(inputs)` gives the final position's logits;
#      `lm.answer_token_ids(sample.answer)[0]` is the answer token; `torch.log_softmax` turns logits into
#      log-probabilities.
#    ```
#
# 2. **One configuration by hand.** Patch only text positions, early → late, on the first 32 samples
#    (`attention_patches(decoder_plan, ["early->late"], ["text"])`, then `patch_experiment`) and compare
#    its Δ log p with the table's row: how far apart are they, against the standard errors?
# 3. **A patch that cannot be a result.** Writing a layer's attention output over itself changes nothing.
#    Build such a patch (`Patch("attn", sources=(l,), targets=(l,), positions="text")`) and see what
#    `patch_experiment` says.

# %%
def my_attention_patch(lm, samples, sources, targets):
    """Mean over samples of the answer's log-probability change (patched - clean) when the attention
    outputs of `sources` are written over those of `targets` at the text positions."""
    # TODO: a clean run recording "attn.s"; a patched run whose edit writes them over "attn.t"
    raise NotImplementedError


# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
import numpy as np
import torch

from vlmlib import Trace


def attention_patch_solution(lm, samples, sources, targets, kind="attn"):
    shifts = []
    for sample in samples:
        inputs = lm.encode_samples([sample])
        text, answer = lm.text_mask(inputs)[0], lm.answer_token_ids(sample.answer)[0]
        with torch.no_grad(), Trace(lm, [f"{kind}.{s}" for s in sources]) as clean:
            clean_logp = torch.log_softmax(lm.last_token_logits(inputs).float(), -1)[0, answer]
        source_of = {f"{kind}.{t}": f"{kind}.{s}" for s, t in zip(sources, targets)}

        def edit(site, value):
            value = value.clone()
            value[0, text] = clean[source_of[site]][0, text].to(value.dtype)
            return value

        with torch.no_grad(), Trace(lm, list(source_of), edit=edit):
            patched_logp = torch.log_softmax(lm.last_token_logits(inputs).float(), -1)[0, answer]
        shifts.append((patched_logp - clean_logp).item())
    return float(np.mean(shifts))


# %% tags=["remove-input"]
from vlmlib import Patch
from vlmlib.paper import exercises

few = samples[:4]
early, late = tuple(decoder_plan.groups["early"]), tuple(decoder_plan.groups["late"])
exercises.check(
    lambda lm, s: my_attention_patch(lm, s, early, late),
    lambda lm, s: attention_patch_solution(lm, s, early, late),
    lambda: patch_experiment(lm, few, [Patch("attn", early, late, "text", "early->late")],
                             target="answer", conditions="answer").rows()[0]["delta_logprob"],
    lm, few, "mean shift of the answer's log-probability", atol=1e-3)

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2
from vlmlib import attention_patches

subset = samples[:32]
mine = patch_experiment(lm, subset, attention_patches(decoder_plan, ["early->late"], ["text"]),
                        batch_size=batch_size, conditions="answer").rows()[0]
table_row = next((r for r in rows if r["kind"] == "attn" and r["label"] == "early->late"
                  and r["positions"] == "text" and r["condition"] == "answer"), None)
text = f"{len(subset)} samples: Δ log p {mine['delta_logprob']:+.3f} ± {mine['delta_logprob_se']:.3f}"
if table_row is None:  # the run's `directions` or `positions` left this row out of the table
    text += "; the table above has no early → late row at text positions (this run left it out)."
else:
    text += (f"; the table's {table_row['n']} samples: {table_row['delta_logprob']:+.3f} ± "
             f"{table_row['delta_logprob_se']:.3f}. ")
    apart = abs(mine["delta_logprob"] - table_row["delta_logprob"])
    # the subset is part of the table's samples: its mean strays from theirs by its s.e. shrunk by the overlap
    spread = mine["delta_logprob_se"] * np.sqrt(max(0.0, 1 - len(subset) / table_row["n"]))
    if len(subset) >= table_row["n"] or apart < 1e-6:
        text += ("The two are the same measurement on the same samples, so they agree: a patch is "
                 "deterministic, and only a different set of samples could move the number.")
    elif apart <= 2 * spread:
        text += (f"They are {apart:.3f} apart, within twice the spread a subset of {len(subset)} of the "
                 f"{table_row['n']} samples should show ({spread:.3f}): the same effect, measured on fewer "
                 "samples.")
    else:
        text += (f"They are {apart:.3f} apart, more than twice the spread a subset of {len(subset)} of the "
                 f"{table_row['n']} samples should show ({spread:.3f}): the first samples are not typical of "
                 "the set, so a result read from them alone would mislead.")
show_markdown(text)

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 3", "code_prompt_hide": "Hide solution 3"}
# Solution 3
from vlmlib.interventions.patching import PatchConfigError

layer = decoder_plan.groups["mid"][0]
try:
    same = patch_experiment(lm, samples[:4], [Patch("attn", (layer,), (layer,), "text", "self")]).rows()[0]
except PatchConfigError:
    show_markdown(f"The experiment refuses the patch before any forward pass. Writing layer {layer}'s "
                  "attention output over itself changes nothing, so its shift would be 0 by construction, "
                  "and a table would show it as a layer whose patch does not matter: a result that measured "
                  "nothing. Source and target layers must differ.")
else:
    show_markdown(f"The patch ran: Δ log p {same['delta_logprob']:+.3f}. A patch that writes each value over "
                  "itself can move the answer by rounding at most, so such a row measures nothing.")
