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
# **Learning objectives.** After this chapter you can (1) run an activation-patching experiment: record
# an activation in a clean run and write it into another run, (2) read a patching table (clean,
# patched, their difference and its spread), and (3) explain why the sign of a raw logit shift is a weak
# basis for comparing a saturated model with the paper's, and which measures compare across regimes.
#
# **Question.** Does the model need what attention computes in a given layer, or can an earlier (or
# later) layer's attention output stand in for it? And does that differ between the image tokens and the
# text tokens?
#
# **Method: activation patching.** We run every sample twice.
#
# 1. *Clean run*: the model reads the image and the question unchanged; we record the attention output
#    of the **source** layers, exactly what attention adds to the residual stream
#    ($\Delta_{\text{Attn}}^{(l)}$ of Appendix F.2).
# 2. *Patched run*: the same input, but at each **target** layer the attention output is replaced by the
#    recorded one of its paired source layer (sources and targets paired in order: the first source onto
#    the first target, and so on), only at one set of positions: the image tokens (*vision*) or the
#    text tokens (*text*, the final position included). The MLPs and every other position compute as
#    usual on the changed residual stream.
#
# We then score a **target** at the final position in both runs, four ways: its logit (the paper's
# "score"), its log-probability $\log p(\text{target})$ (the paper's cross-entropy loss is its
# negative), the *logit difference* (its logit minus the best other token's: positive exactly when it
# is the top-1 prediction) and top-1 accuracy. An answer of several tokens (Qwen2's tokenizer writes
# "10" as "1", "0") is scored by the log-probability of all its tokens, teacher-forced after the prompt;
# its logit is that of its first token.
#
# **Two targets.** The paper's target sat at 15-20 nats of loss (its clean losses in Tables 1-2): the
# model gave it almost no probability. Our organisms answer the counting question with near certainty
# (loss near 0), and a certain answer can only lose probability, so almost any patch lowers its logit
# and signs of logit shifts are not comparable between the two regimes. We therefore run two
# *conditions*: **answer** (the dataset's answer) and **low-rank**, the paper-like regime, whose target
# is a wrong count: the next count in the answer set, the largest wrapping to the smallest (3 → 4,
# 6 → 1). That rule is fixed before any run and ignores the model's scores, so it cannot pick targets
# that any perturbation would move back towards the middle.
#
# **The verdict's measure.** Each row is compared with the paper on **Δ log p(target)** (the paper's
# value is its clean loss minus its patched loss), not on the sign of Δ logit: a logit can rise while
# the target's probability falls, and the paper's own Table 1 shows it (vision early → late: Δ logit
# −0.28, loss 14.83 → 14.53, so Δ log p +0.30). Δ top-1 accuracy says whether answers actually change.
# Every row is a paired comparison (same sample, clean and patched); we test "no shift" with a paired
# t test and correct for testing all rows at once with **Holm's** step-down procedure
# {cite:p}`holm1979simple` at α = 0.05. Only
# rows resolved after correction count, and a row whose patch changes nothing never counts.
#
# **Implementation.** `vlmlib.interventions.patching` hooks the sites through `vlmlib.trace.Trace`. All
# configurations run in one forward pass per batch where memory allows: the batch is repeated once per
# configuration along the batch dimension and block $k$ receives configuration $k$'s patch. The tests
# check that patching a site with its own clean activation gives back the clean logits, that positions
# outside the set and every layer before the first target are untouched, that stacked configurations
# equal one-at-a-time runs, that an nnsight implementation gives the same logits, and that multi-token
# answers score as a hand-written teacher-forced run does. A patch that would write a layer with its
# own output, or repeat another, is refused before any forward pass.
#
# **How we read the paper.**
# - *Direction*: "Early → Mid" means sources early, targets mid: the early layers' attention output is
#   written over the mid layers'. The paper's own reading of its result ("earlier visual features
#   overwrite later representations") confirms this order.
# - *Layer numbers*: 0-based module indices (`layers[2]` is "layer 2"): early 2-4, mid 5-7, late 10-12
#   of PaliGemma's 18-layer decoder, and the same literal indices on Qwen2-VL's 28-layer decoder
#   ("the same patching configuration"). On the paper's own models (`groups="auto"`) we use exactly
#   these indices; on any other depth we scale them (`vlmlib.paper.groups`: disjoint, ordered groups of
#   about a sixth of the depth each), and the page says which. Section 2.2 also says the outputs are
#   fed "into the self-attention outputs of the final 3 layers", yet Table 1 has targets *Mid* and
#   *Late*. We read *Late* as 10-12 (the group the same sentence defines), and add two rows the table
#   does not have, early → final and mid → final (final = the last three layers), for the other reading.
# - *Vision / Text*: decoder positions of image tokens / of text tokens (section 2.2, Table 1). Appendix
#   D.2 discusses Qwen2-VL's "Vision" rows as attention inside the vision encoder; we show that reading
#   too (*tower attn* rows: attention outputs patched between the vision tower's own layer groups), with
#   its own comparison, for both families (for PaliGemma it goes beyond the paper).
# - *Target token*: the paper's "target token" is the ground-truth answer (its clean losses of ~15-20
#   nats show the answer token is not the model's top prediction). We use the dataset's answer when it
#   has one, else the clean run's top-1 token; the low-rank condition is described above.
#
# **Paper's finding (PaliGemma).** Vision positions: early → mid and late → mid barely move the target
# logit, early → late and mid → late lower it by about 0.27 (yet raise its log-probability by 0.30).
# Text positions: early → mid and early → late *raise* it by about 6 and lower the loss; late → mid
# lowers it. Qwen2-VL (Table 2): all logit shifts within about ±1.4, the largest drop text early → late
# (−1.41).


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
# ```{glue:figure} patching
# ---
# alt: >-
#   Grouped bar charts, one panel per condition and one for the paper: for each patch direction, the
#   change in the target's log-probability when attention outputs are patched at vision positions, at
#   text positions, or inside the vision tower.
# ---
# How much each attention-output patch moves the answer: the change in the target token's measure
# (the verdict's measure, named on the axis) for each direction, by where the patch writes; ours with
# one standard error per condition, the paper's below (it reports no spread).
# ```

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

# %% [markdown]
# ## What this run shows
#
# Our numbers, then the verdict of each claim of the paper this chapter answers, by the explicit rules
# of the [What holds](../what-holds.md) page. Every number of this page is in its results file,
# {download}`03_attention_patching.json <03_attention_patching.json>`.

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
}, points)

# %% [markdown]
# ## Exercises
#
# 1. **One configuration by hand.** Patch only text positions, early → late, on the first 32 samples
#    (`attention_patches(decoder_plan, ["early->late"], ["text"])`, then `patch_experiment`) and compare
#    its Δ log p with the table's row: how far apart are they, against the standard errors?
# 2. **A patch that cannot be a result.** Writing a layer's attention output over itself changes nothing.
#    Build such a patch (`Patch("attn", sources=(l,), targets=(l,), positions="text")`) and see what
#    `patch_experiment` says.

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
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
             f"{table_row['delta_logprob_se']:.3f}. A subset's mean differs from the whole set's "
             "by about its own standard error.")
show_markdown(text)

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2
from vlmlib import Patch
from vlmlib.interventions.patching import PatchConfigError

layer = decoder_plan.groups["mid"][0]
try:
    patch_experiment(lm, samples[:4], [Patch("attn", (layer,), (layer,), "text", "self")])
except PatchConfigError as refused:
    show_markdown(f"Refused before any forward pass: *{refused}*")
