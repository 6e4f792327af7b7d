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
# # 8. Where the answer reads the image
#
# *Beyond the paper: a causal test of the "retrieve" step (sections 2.3-2.4), by attention knockout as in
# {cite:t}`geva2023dissecting` and {cite:t}`neo2024towards`.*

# %% tags=["parameters", "remove-cell"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 200
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "08_knockout.json"  # where this chapter writes its numbers
system_prompt: str | None = None  # Qwen2-VL: a system turn before the image (None: none, as the paper ran it)
task_prefix = ""  # PaliGemma: task prefix before the question, e.g. "answer en " (none, as the paper ran it)
max_pixels: int | None = None  # Qwen2-VL: the image processor's pixel budget (None: the processor's default)
window = None  # layers per sliding window; None: the paper's three-layer group scaled to the depth
target = "auto"  # token scored: "answer", "top1" (clean run's top-1), or "auto" (answer if dataset has one)
max_rows = 128  # rows per knockout forward pass (samples x knockouts stacked); raise it on a GPU

# %% tags=["remove-input"]
import numpy as np

from vlmlib import fit_tuned_lens, knockout_experiment, layer_sweep, logit_lens, observe
from vlmlib.interventions.knockout import QUERY_SETS, SCHEMES
from vlmlib.paper import figures, page, setup
from vlmlib.paper.chapters import knockout
from vlmlib.paper.figures import COLUMN_WIDTH, LAYER_AXIS, book_figure, line_style
from vlmlib.paper.knockout import QUERY_COLOURS, QUERY_NAMES, rows_table, signed, sweep_axes

run = setup("08_knockout", globals())  # window None: the paper's three-layer group scaled to the depth
lm, samples, L = run.lm, run.samples, run.lm.num_layers
window, batch_size, max_rows = (run.params[k] for k in ("window", "batch_size", "max_rows"))

# %% [markdown]
# **Learning objectives.** After this chapter you can (1) explain what an attention knockout changes in
# the forward pass and why it is a causal test where an attention map is only a reading, (2) tell from
# single-layer, window and "from a layer onwards" knockouts *where* and *by when* a model has read the
# image, and (3) judge a knockout effect against its paired standard error.
#
# **Question.** Chapter 4 showed where the final token's attention goes. But attention that is *there* need
# not *matter*: a layer may attend to the image and throw the result away, and a small share of attention
# may carry everything the answer needs. In which layers does the answer actually read the image?
#
# **Method.** In every decoder layer, attention weighs the keys with
#
# $$\operatorname{softmax}\Big(\frac{Q K^\top}{\sqrt{d_k}} + M\Big),$$
#
# where the mask $M$ is $0$ for a key a query may see and $-\infty$ otherwise (causal order, padding,
# PaliGemma's bidirectional prefix). A **knockout** of query set $Q$ in layer set $S$ sets
# $M_{qk} = -\infty$ for every query $q \in Q$ and every image token $k$, in the layers of $S$ only; the
# rest of the pass runs as the model computes it. The blocked query's weight moves to the keys it can
# still see (softmax renormalises), so this removes the *route* from the image to that query in those
# layers, not the image. We block two query sets:
#
# - **the final position**, where the answer is read out (the "last position" knockout of
#   {cite:t}`geva2023dissecting`);
# - **all text positions** (the final one included): no text token may read the image in those layers,
#   so information can reach the answer from the image only in the other layers.
#
# and three layer sets: each **single layer**; each **window** of `window` consecutive layers (the paper's
# three-layer group scaled to the depth, unless set), since a model may read redundantly in neighbouring
# layers; and each **layer onwards** (layer $l$ to the last): if blocking everything from $l$ on costs
# nothing, the image has been read *before* layer $l$.
#
# We score the answer token at the final position against a clean run of the same samples: top-1
# accuracy, the change in its log-probability $\Delta \log p(\text{answer})$, and the change in its logit
# difference (its logit minus the best other logit). Every change is computed per sample, so its standard
# error is the paired one (the s.d. of the per-sample differences over $\sqrt{n}$), which removes the
# sample-to-sample spread that a clean run and a knocked run share.
#
# **How it is implemented.** `vlmlib.knockout` edits the attention mask on its way into the attention
# module of each chosen layer (a forward pre-hook on the family's attention site, so the same code runs on
# every family), writing the blocked (query, image key) pairs out of the mask whatever form transformers
# gave it (boolean, additive, or none for plain causal attention). Several knockouts share one forward
# pass along the batch dimension, and the vision tower, which a knockout never touches, runs once. Nothing
# before a knockout's first blocked layer can change, so each pass resumes from the clean run's residual
# state just before the first blocked layer of its knockouts and skips the decoder blocks before it (the
# mechanism `vlmlib.patching` uses for activation patching); knockouts are stacked in order of their first
# blocked layer, so that the late ones share passes that skip most of the decoder. The tests check that a
# knockout of no layer leaves every logit bit for bit unchanged, that blocking every layer from all text
# positions agrees with an independent eager implementation that zeroes those attention weights and
# renormalises, that the answer then no longer depends on the image at all, and that the resumed passes
# give the numbers of passes through the whole decoder.
#
# **How we read the paper.** The paper argues that the final token *retrieves* visual information late,
# from attention to the image in the final layers (Figure 2). A knockout asks the causal version of that
# question: if the answer reads the image late, blocking the final layers from the final position should
# hurt, and blocking the early layers should not. The paper ran no knockout; there is no paper number to
# compare with, only its account.

# %% [markdown]
# ## Where attention is and where it matters
#
# Left: the attention mass on the image per layer (chapter 4's reading): the final token's, and the mean
# over text queries. Right: top-1 accuracy when the image is blocked from the same queries in that layer
# alone. Bars: one standard error over samples (left) and one binomial standard error (right).

# %% tags=["hide-input", "remove-output"]
knockouts = [ko for queries in QUERY_SETS for ko in layer_sweep(L, queries, window=window)]
result = knockout_experiment(lm, samples, knockouts, batch_size=batch_size, target=target, max_rows=max_rows)
obs = observe(lm, samples, readings=("attention",), batch_size=batch_size, progress=False)
mass = knockout.attention_mass(obs)
single = {q: result.select(q, "layer") for q in QUERY_SETS}
QUERY_SHORT = {"final": "final position", "text": "all text positions"}
clean_acc = single["text"][0]["clean_acc"]

fig, (left, right) = book_figure(1, 2, figsize=(COLUMN_WIDTH, 3.9), sharex=True)
for k, queries in enumerate(QUERY_SETS):
    mean, sem = mass[queries]
    left.errorbar(range(L), mean, yerr=sem, ms=4, capsize=2, color=QUERY_COLOURS[queries],
                  label=f"queries: {QUERY_SHORT[queries]}", **line_style(k))
    acc = np.array([r["knocked_acc"] for r in single[queries]])
    acc_se = np.array([r["knocked_acc_se"] for r in single[queries]])
    right.errorbar(range(L), acc, yerr=acc_se, ms=4, capsize=2, color=QUERY_COLOURS[queries], **line_style(k))
right.axhline(clean_acc, color="0.3", ls=(0, (8, 3)), lw=1, label="clean run")
left.set(xlabel=LAYER_AXIS, ylabel="attention mass on image tokens", ylim=(0, 1.02),
         title="where attention is")
right.set(xlabel="layer where the image is blocked", ylabel="top-1 accuracy", ylim=(-0.02, 1.02),
          title="where it matters")
figures.integer_ticks(left)
handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
fig.legend(handles, [h.get_label() for h in handles], loc="outside lower center", ncols=3, frameon=False)
figures.show(fig, "attention-and-knockout")

# %% [markdown]
# ```{glue:figure} attention-and-knockout
# ---
# alt: >-
#   Two panels over the decoder layers. Left, the attention mass on image tokens of the final position
#   and of all text positions. Right, top-1 accuracy when the image is blocked from those queries in that
#   layer alone, with the clean run's accuracy as a dashed line.
# ---
# Where attention is and where it matters: the attention mass on the image per layer (left) and the
# top-1 accuracy when the image is hidden from the same queries in that layer alone (right). Bars: one
# standard error over samples (left) and one binomial standard error (right).
# ```

# %% [markdown]
# ## One layer at a time
#
# The same single-layer knockouts with all three measures, mean ± paired standard error over samples.
# $\Delta$ log p is in nats; a change of $-0.7$ halves the probability of the answer.

# %% tags=["remove-input"]
page.show_markdown(rows_table(single["final"] + single["text"]))

# %% [markdown]
# ## Windows of layers, and from a layer onwards
#
# Each point is drawn at the first blocked layer: a window $[l, l + w - 1]$ or the run $[l, L - 1]$. Top:
# change in top-1 accuracy; bottom: change in the answer's log-probability; bars: one paired standard error.

# %% tags=["hide-input", "remove-output"]
fig, axes = book_figure(2, 3, figsize=(COLUMN_WIDTH, 5.4), sharex=True, sharey="row")
titles = {"layer": "single layer", "window": f"window of {window}", "onwards": "layer onwards"}
for col, scheme in enumerate(SCHEMES):
    sweep_axes(axes[0, col], result, scheme, "delta_acc", "Δ top-1 accuracy" if col == 0 else "")
    sweep_axes(axes[1, col], result, scheme, "delta_logprob", "Δ log p(answer)" if col == 0 else "")
    axes[0, col].set_title(titles[scheme])
    axes[1, col].set_xlabel("first blocked layer")
fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
figures.show(fig, "knockout-sweeps")

# %% [markdown]
# ```{glue:figure} knockout-sweeps
# ---
# alt: >-
#   Six panels: for single layers, windows of layers and every layer from one on, the change in top-1
#   accuracy (top row) and in the answer's log-probability (bottom row) when the image is blocked from
#   the final position or from all text positions, against the first blocked layer.
# ---
# Knocking the image out of one layer, of a window of layers, or of every layer from one on, drawn at
# the first blocked layer: the change in top-1 accuracy (top) and in the answer's log-probability
# (bottom), blocked from the final position or from all text positions. Bars: one paired standard error.
# ```

# %% [markdown]
# The window and onwards rows in numbers:

# %% tags=["remove-input"]
page.show_markdown(rows_table([r for scheme in ("window", "onwards") for q in QUERY_SETS
                               for r in result.select(q, scheme)]))

# %% [markdown]
# ## The answer's own timeline: the logit lens
#
# Knockouts say where the answer *needs* the image. The logit lens asks when the answer is *there*: the
# final position's residual stream after every layer, $H^{(l)}$, is decoded with the model's own final norm
# and unembedding, as if that layer were the last {cite:p}`nostalgebraist2020logitlens`. The first state
# from which the answer stays the top-1 token is the paper's "retrieve" moment, measured on the answer
# itself. Early states may hold the count in another basis than the output's, which the plain lens cannot
# read; a **tuned lens** {cite:p}`belrose2023tunedlens` first maps each state by an affine map fitted on
# other samples (here by ridge least squares onto the last state, on the second half of the samples; both
# lenses are read on the first half). The image tokens' own states are decoded too: does the count appear at
# the image positions before it reaches the final one?

# %% tags=["hide-input", "remove-output"]
half = max(1, len(samples) // 2)
tuned_lens = fit_tuned_lens(lm, samples[half:], batch_size=batch_size)
lens = {"logit": logit_lens(lm, samples[:half], batch_size=batch_size, image=True),
        "tuned": logit_lens(lm, samples[:half], batch_size=batch_size, tuned=tuned_lens)}
final_input = knockout.final_layers(L, lm.family.name)[0]
fig, ax = book_figure(figsize=(COLUMN_WIDTH, 3.4))
states = np.arange(L + 1)
for label, result_, read, style in (("logit lens, final position", lens["logit"], "final", "-o"),
                                    ("tuned lens, final position", lens["tuned"], "final", "--s"),
                                    ("logit lens, image tokens", lens["logit"], "image", ":^")):
    ax.plot(states, result_.accuracy(read), style, ms=4, label=label)
ax.axvline(final_input, color="grey", lw=0.8, ls=(0, (1, 3)))
ax.set(xlabel="state H(l), after l layers (0: the decoder's input)", ylabel="answer is top-1",
       ylim=(-0.03, 1.03), title=f"{lm.name}: when the answer becomes readable")
ax.set_xticks(states)
ax.legend()
figures.show(fig, "lens")

# %% [markdown]
# ```{glue:figure} lens
# ---
# alt: >-
#   Line plot over the states of the decoder of the share of samples whose answer is the top-1 token when
#   the state is decoded by the logit lens or the tuned lens at the final position, and by the logit lens
#   at the image tokens; a dotted vertical line marks the final layers' input.
# ---
# When the answer becomes readable: the share of samples whose answer is the top-1 token when each state
# $H^{(l)}$ is decoded with the model's own final norm and unembedding ({term}`logit lens`), or first
# mapped by the tuned lens, at the final position and at the image tokens.
# ```

# %% tags=["remove-input"]
page.show_markdown(
    f"The dotted line marks the final layers' input (state {final_input}). Read on {half} samples; the "
    f"tuned lens was fitted on {len(samples) - half} others. The answer becomes decodable (top-1 in at "
    f"least 90% of the samples the model itself answers correctly, from that state on) from state "
    f"{lens['logit'].first_decodable_layer()} by the logit lens and "
    f"{lens['tuned'].first_decodable_layer()} by the tuned lens.")

# %% [markdown]
# ## What this run shows
#
# Every number of this page is in its results file, {download}`08_knockout.json <08_knockout.json>`.

# %% tags=["remove-input"]
summary = knockout.sweep_summary(result, mass, L, lm.family.name)
run.finish({
    "layers": list(range(L)),
    "layer_note": "layer i is the module layers[i] (0-based); a window or onwards row lists its "
                  "blocked layers",
    "verdict_measure": "delta_logprob",
    "query_sets": {q: QUERY_NAMES[q] for q in QUERY_SETS},
    "knockout": result.to_dict(),
    "per_layer": knockout.per_layer(result),
    "attention_mass": {q: {"mean": mass[q][0], "sem": mass[q][1]} for q in QUERY_SETS},
    "summary": summary,
    "lens": {name: found.to_dict() for name, found in lens.items()},
}, knockout.conclusion_points(result, summary, L))

# %% [markdown]
# ## Exercises
#
# 1. **Redundant readers.** Which pairs of layers does the model need *together*? Knock out every pair of
#    layers from all text positions and find pairs whose joint knockout costs much more than either alone.
# 2. **Attention is not use.** Across layers, how well does the final token's attention mass on the image
#    predict the drop in log p when that layer is knocked out? Compute the rank correlation.

# %% tags=["hide-cell"]
# Solution 1
from itertools import combinations

from vlmlib import Knockout

few = samples[:64]
singles = layer_sweep(L, "text", schemes=("layer",))
pairs = [Knockout((a, b), "text", "pair", f"{a}+{b}") for a, b in combinations(range(L), 2)]
few_rows = knockout_experiment(lm, few, singles + pairs, batch_size=batch_size, target=target,
                               max_rows=max_rows).rows()
alone = {r["layers"][0]: r["delta_logprob"] for r in few_rows if r["scheme"] == "layer"}
pair_rows = [r for r in few_rows if r["scheme"] == "pair"]
synergy = sorted(pair_rows,
                 key=lambda r: r["delta_logprob"] - min(alone[r["layers"][0]], alone[r["layers"][1]]))[:3]
page.show_markdown(f"Pairs that cost most beyond their worse member ({len(few)} samples): " + "; ".join(
    f"{r['label']}: Δ log p {signed(r['delta_logprob'])} vs {signed(alone[r['layers'][0]])} and "
    f"{signed(alone[r['layers'][1]])} alone" for r in synergy))

# %% tags=["hide-cell"]
# Solution 2
from scipy.stats import spearmanr

drop = [-r["delta_logprob"] for r in single["final"]]
rho, p = spearmanr(mass["final"][0], drop)
page.show_markdown(f"Spearman's ρ between attention mass and drop in log p over the {L} layers: {rho:+.2f} "
                   f"(p = {p:.2f}).")
