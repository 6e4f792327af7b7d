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
question: str | None = None  # what every prompt asks (None: the dataset's own, else the counting question)
image_size: int | None = None  # image side in pixels (None: what the model expects: 448 for PaliGemma-448)
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
# **Question.** Attention that is present need not matter: in which layers does the answer actually read the
# image? We hide the image from the answer in chosen layers and see when it is lost.
#
# ```{glue:figure} knockout-sweeps
# ---
# alt: >-
#   Six panels: for single layers, windows of layers and every layer from one on, the change in top-1
#   accuracy (top row) and in the answer's log-probability (bottom row) when the image is blocked from
#   the final position or from all text positions, against the first blocked layer.
# ---
# {glue:md}`result`
#
# Knocking the image out of one layer, of a window of layers, or of every layer from one on, drawn at
# the first blocked layer: the change in top-1 accuracy (top) and in the answer's log-probability
# (bottom), blocked from the final position or from all text positions. Bars: one paired standard error.
# ```
#
# ## What this run shows
#
# ```{glue:md} conclusion
# :format: myst
# ```
#
# Every number of this page is in its results file, {download}`08_knockout.json <08_knockout.json>`; the
# [What holds](../what-holds.md) page states the rule behind each verdict.
#
# ## Method
#
# An attention knockout removes the image tokens from the keys the final position (or every text position)
# may attend to, in one layer, a window of layers or every layer from one on; we compare the answer's
# accuracy and log-probability with a clean run. The whole method, how we read the paper and how the library
# implements it: {ref}`How it works, chapter 8 <how-08>`.

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
}, knockout.conclusion_points(result, summary, L), above=True)

# %% [markdown]
# ## Exercises
#
# The first exercise builds the chapter's measurement with the trace primitive; the others read its results.
# Each runs on the organisms in seconds; open a hint or a solution only after trying.
#
# 1. **The logit lens yourself** (medium ★★☆, about 25 minutes). The chapter's last figure decodes every
#    state at the final position as if it were the last layer's output. Write a function that returns, for
#    each state from the decoder's input to the last layer's output, the share of samples whose decoded top
#    token is the first token of the answer. Fill in the function in the next cell; the cell after the
#    solution checks it against the library on four samples (until you fill it in, it checks the solution).
#
#    ```{admonition} Hints
#    :class: dropdown
#    - The site `"embed.0"` is the decoder's input and `"resid.3"` the output of the layer numbered 3;
#      `lm.last_index(inputs)[0]` is the final position.
#    - `decode(lm, state)` from the library's lens module applies the final norm and the unembedding, as
#      the model does to its last layer's output.
#    - `lm.answer_token_ids(sample.answer)[0]` is the answer's first token.
#    ```
#
# 2. **Redundant readers.** Which pairs of layers does the model need *together*? Knock out every pair of
#    layers from all text positions and find pairs whose joint knockout costs much more than either alone.
# 3. **Attention is not use.** Across layers, how well does the final token's attention mass on the image
#    predict the drop in log p when that layer is knocked out? Compute the rank correlation.

# %%
def my_lens_accuracy(lm, samples):
    """One number per state (layers + 1): the share of samples whose decoded top token is the answer's."""
    # TODO: trace "embed.0" and every "resid.l"; decode each state at the final position; compare top-1
    raise NotImplementedError


# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
import numpy as np
import torch

from vlmlib import Trace
from vlmlib.lens import decode


def lens_accuracy_solution(lm, samples):
    sites = ["embed.0"] + [f"resid.{layer}" for layer in range(lm.num_layers)]
    hits = []
    for sample in samples:
        inputs = lm.encode_samples([sample])
        with torch.no_grad(), Trace(lm, sites) as tr:
            lm.forward(inputs)
        last, answer = lm.last_index(inputs)[0], lm.answer_token_ids(sample.answer)[0]
        with torch.no_grad():
            hits.append([float(decode(lm, tr[s][0, last]).argmax().item() == answer) for s in sites])
    return np.mean(hits, axis=0)


# %% tags=["remove-input"]
from vlmlib import logit_lens
from vlmlib.paper import exercises

few = samples[:4]
exercises.check(my_lens_accuracy, lens_accuracy_solution,
                lambda: logit_lens(lm, few, target="answer").accuracy("final"),
                lm, few, "lens accuracies per state")

# %% tags=["hide-cell"]
# Solution 2
from itertools import combinations

from vlmlib import Knockout

few = samples[:64]
singles = layer_sweep(L, "text", schemes=("layer",))
pairs = [Knockout((a, b), "text", "pair", f"{a}+{b}") for a, b in combinations(range(L), 2)]
few_rows = knockout_experiment(lm, few, singles + pairs, batch_size=batch_size, target=target,
                               max_rows=max_rows).rows()
alone = {r["layers"][0]: r["delta_logprob"] for r in few_rows if r["scheme"] == "layer"}
alone_se = {r["layers"][0]: r["delta_logprob_se"] for r in few_rows if r["scheme"] == "layer"}
pair_rows = [r for r in few_rows if r["scheme"] == "pair"]
synergy = sorted(pair_rows,
                 key=lambda r: r["delta_logprob"] - min(alone[r["layers"][0]], alone[r["layers"][1]]))[:3]
page.show_markdown(f"Pairs that cost most beyond their worse member ({len(few)} samples): " + "; ".join(
    f"{r['label']}: Δ log p {signed(r['delta_logprob'])} vs {signed(alone[r['layers'][0]])} and "
    f"{signed(alone[r['layers'][1]])} alone" for r in synergy))


def beyond_sum(r):
    """A pair costs more than its two layers' knockouts added, by more than two standard errors."""
    a, b = r["layers"]
    spread = np.sqrt(r["delta_logprob_se"] ** 2 + alone_se[a] ** 2 + alone_se[b] ** 2)
    return r["delta_logprob"] < alone[a] + alone[b] - 2 * spread


needed = [r for r in synergy if beyond_sum(r)]
if needed:
    names = [" and ".join(map(str, r["layers"])) for r in needed]
    page.show_markdown(
        f"Layers {'; '.join(names)} cost more together than their two knockouts added, by more than two "
        "standard errors: what one of them reads, the other can partly read in its place, so knocking out "
        "one layer at a time underrates how "
        "much the model uses them.")
else:
    page.show_markdown(
        "None of these pairs costs more than its two layers' knockouts added, beyond two standard errors: a "
        "pair costs more than its worse member because two separate effects add up, not because one layer "
        "stands in for the other. One-layer knockouts already show what each layer does here.")

# %% tags=["hide-cell"]
# Solution 3
from scipy.stats import spearmanr

from vlmlib.paper.format import p_value

drop = [-r["delta_logprob"] for r in single["final"]]
rho, p = spearmanr(mass["final"][0], drop)
if not p < 0.05:  # also where a constant column leaves no correlation at all
    why = (f"With only {L} layers that is no reliable relation: how much the final token looks at the image "
           "in a layer does not tell how much the answer needs that layer's reading of it.")
elif rho > 0:
    why = ("Here attention mass does track use: the layers that look at the image more also cost more when "
           "knocked out, by rank, though single layers can still break the rule.")
else:
    why = ("The layers that look at the image more matter less when knocked out: much of the attention on "
           "the image is not what the answer uses.")
page.show_markdown(f"Spearman's ρ between attention mass and drop in log p over the {L} layers: {rho:+.2f} "
                   f"(p = {p_value(p)}). {why}")
