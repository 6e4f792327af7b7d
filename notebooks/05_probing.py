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
# # 5. Linear probing across layers
#
# *Paper section 2.4, Figure 3.*

# %% tags=["parameters", "remove-cell"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path (with 'category')
n_samples = 300  # at least 2 x folds samples of every category, or the probes refuse to run
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "05_probing.json"  # where this chapter writes its numbers
system_prompt: str | None = None  # Qwen2-VL: a system turn before the image (None: none, as the paper ran it)
task_prefix = ""  # PaliGemma: task prefix before the question, e.g. "answer en " (none, as the paper ran it)
max_pixels: int | None = None  # Qwen2-VL: the image processor's pixel budget (None: the processor's default)
question: str | None = None  # what every prompt asks (None: the dataset's own, else the counting question)
image_size: int | None = None  # image side in pixels (None: what the model expects: 448 for PaliGemma-448)
train_last = 4  # probes are trained on each of the last `train_last` states
folds = 5  # stratified k-fold cross-validation: the held-out split and the spread
scaling = "train_layer"  # "train_layer" (the probe is one fixed function) or "per_layer" standardisation

# %% tags=["remove-input"]
import numpy as np

from vlmlib import pooled_features
from vlmlib.paper import figures, page, setup
from vlmlib.paper import format as fmt
from vlmlib.paper.chapters import probing
from vlmlib.paper.probing import probe_figure, probing_results
from vlmlib.probing import DEFAULT_FEATURE_SETS, last_layers, probe_labels

run = setup("05_probing", globals())  # single-category samples (vlmlib.probing.load_probe_samples)
lm, samples, paper = run.lm, run.samples, run.paper_values("figure3_probing")
batch_size, seed, folds, train_last = (run.params[k] for k in ("batch_size", "seed", "folds", "train_last"))
labels = probe_labels(samples)
train_layers = last_layers(lm.num_layers + 1, train_last)

# %% [markdown]
# **Question.** Is the object category in an image linearly readable from the decoder's states? And does a
# probe trained on the last layers still read it from earlier ones, as it would if the image tokens were
# carried forward unchanged?
#
# ```{glue:figure} probes
# ---
# alt: >-
#   One panel per feature set, held-out accuracy of linear probes over the states of the decoder: a
#   probe trained on the last state and evaluated on every state, probes trained on the other late
#   states, a probe trained on each state itself, a shuffled-label control, and chance.
# ---
# {glue:md}`result`
#
# Where the object's category can be read, one panel per feature set: held-out accuracy on every state
# of the probe trained on the last state (bold, with circles; band: one standard deviation across
# folds), of the probes trained on the other late states (thin), of a probe trained and tested on that
# same state (dashed), of the shuffled-label control (dotted), and chance (long dashes). Where the
# family matches, the paper's plateau and trained-layer accuracy are drawn in orange.
# ```
#
# ## What this run shows
#
# ```{glue:md} conclusion
# :format: myst
# ```
#
# Every number of this page is in its results file, {download}`05_probing.json <05_probing.json>`; the [What
# holds](../what-holds.md) page states the rule behind each verdict.
#
# ## Method
#
# A logistic-regression probe is trained on the mean state of a set of tokens at each of the last four
# layers and evaluated, on held-out samples, at every layer, beside chance, a shuffled-label control and
# probes trained at each layer. The whole method, how we read the paper and how the library implements it:
# {ref}`How it works, chapter 5 <how-05>`.

# %% tags=["remove-input"]
counts = probing.category_counts(labels)
naming = probing.captions_naming_category(samples, counts)
page.show_markdown(f"{len(samples)} single-category samples, per category: "
                   + ", ".join(f"{c} {k}" for c, k in counts.items())
                   + f". {naming} of {len(samples)} captions name their category. First caption: "
                   f"*{samples[0].caption}*; question: *{samples[0].question}*. Probes are trained on states "
                   f"{', '.join(str(l) for l in train_layers)} (the outputs of the last {train_last} decoder "
                   f"blocks) and evaluated on states 0 to {lm.num_layers}.")

# %% [markdown]
# ## Pooled features: three observation passes

# %% tags=["hide-input"]
features = pooled_features(lm, samples, sets=DEFAULT_FEATURE_SETS, batch_size=batch_size, progress=False)

# %% [markdown]
# ## Probes: train on the last layers, evaluate on every layer (Figure 3)

# %% tags=["hide-input", "remove-output"]
# One set of probes per feature set, evaluated with both standardisations (the controls come with the first).
probes, rescaled = probing.fit_probes(features, labels, train_layers, folds=folds, seed=seed, scaling=scaling)
payload = probing_results(probes, rescaled)
figures.show(probe_figure(probes, paper=paper), "probes")

# %% tags=["remove-input"]
page.show_markdown(probing.results_table(payload, paper, folds))

# %% [markdown]
# The controls, and the question whether a late probe fails on early states only because the
# residual stream's scale grows: the same probes, with each evaluated state standardised by its own
# training-split mean and deviation (no labels involved) instead of the training state's.

# %% tags=["remove-input"]
page.show_markdown(probing.controls_table(payload, probing.other_scaling(scaling)))

# %% tags=["remove-input"]
run.finish({
    "n_samples_used": len(samples),
    "layer_note": "state l is H^(l): 0 = decoder input, l >= 1 = raw output of decoder block l - 1",
    "category_counts": counts,
    "captions_naming_category": naming,
    **payload,
    "paper": paper,
}, probing.conclusion_points(payload), above=True)

# %% [markdown]
# ## Exercises
#
# The first exercise builds the chapter's measurement with the trace primitive; the others read its results.
# Each runs on the organisms in seconds; open a hint or a solution only after trying.
#
# 1. **Build the probes' features yourself** (medium ★★☆, about 20 minutes). A probe reads one vector
#    per sample and state. Write a function that returns, for each sample and each state from the decoder's
#    input to the last layer's output, the mean of the state over the image tokens, with the sample's own
#    question as the prompt: an array of shape (samples, layers + 1, width), the image features the chapter's
#    probes are trained on. Fill in the function in the next cell; the cell after the solution checks it
#    against the library on four samples (until you fill it in, it checks the solution).
#
#    ```{admonition} Hints
#    :class: dropdown
#    - The site `"embed.0"` is the decoder's input and `"resid.3"` the output of the layer numbered 3.
#    - Encode one sample with `lm.encode_samples([sample])` and run `lm.forward(inputs)` inside `with
#      Trace(lm, sites) as tr:`.
#    - `lm.vision_mask(inputs)` is true at the image tokens; average over them with `.mean(0)`, and stack
#      the states with `np.stack`.
#    ```
#
# 2. **A probe by hand.** Train a logistic regression (scikit-learn) on the last state of the
#    `vision_question` features, cross-validated over as many folds as the chapter used, and compare
#    its held-out accuracy with the chapter's own-layer probe on that state.
# 3. **The control task by hand.** Shuffle the labels and train the same probe again. Where should its
#    held-out accuracy sit, and why does training accuracy say nothing here?

# %%
def my_image_features(lm, samples):
    """(samples, layers + 1, width): each state averaged over the sample's image tokens."""
    # TODO: trace "embed.0" and every "resid.l"; average each state over the image tokens
    raise NotImplementedError


# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
import torch

from vlmlib import Trace


def image_features_solution(lm, samples):
    sites = ["embed.0"] + [f"resid.{layer}" for layer in range(lm.num_layers)]
    features = []
    for sample in samples:
        inputs = lm.encode_samples([sample])
        with torch.no_grad(), Trace(lm, sites) as tr:
            lm.forward(inputs)
        image = lm.vision_mask(inputs)[0]
        features.append(np.stack([tr[s][0, image].float().mean(0).numpy() for s in sites]))
    return np.stack(features)


# %% tags=["remove-input"]
from vlmlib import pooled_features
from vlmlib.paper import exercises

few = samples[:4]
exercises.check(my_image_features, image_features_solution,
                lambda: pooled_features(lm, few, sets=("vision_question",), progress=False)[
                    "vision_question"],
                lm, few, "pooled image states", atol=1e-3)

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

last = features["vision_question"][:, -1]
probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
by_hand = cross_val_score(probe, last, labels, cv=folds)
theirs = probes["vision_question"].own_layer[:, -1]
apart = by_hand.mean() - theirs.mean()
spread = np.sqrt((by_hand.var(ddof=1) + theirs.var(ddof=1)) / folds)  # s.e. of the gap from the fold spreads
page.show_markdown(
    f"By hand: {fmt.percent(by_hand.mean(), by_hand.std(ddof=1))} (fold s.d.) on state {lm.num_layers}; the "
    f"chapter's own-layer probe: {fmt.percent(theirs.mean())}, {fmt.points(apart)} apart. "
    + ("That is within two standard errors of the fold-to-fold spread: a plain logistic regression reads the "
       "same from the last state, so the chapter's probe holds no hidden trick."
       if abs(apart) <= 2 * spread else
       "That is more than two standard errors of the fold-to-fold spread: the two set up the probe "
       "differently (its folds, its standardisation, its regularisation), and the accuracy depends on it.")
    + (" Both sit near chance, so the last state holds little of the count that a linear probe can read."
       if max(by_hand.mean(), theirs.mean()) < probes["vision_question"].majority + 0.05 else ""))

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 3", "code_prompt_hide": "Hide solution 3"}
# Solution 3
shuffled = np.random.default_rng(seed).permutation(labels)
control = cross_val_score(probe, last, shuffled, cv=folds)
train = probe.fit(last, shuffled).score(last, shuffled)
chance, majority = 1 / len(set(labels)), probes["vision_question"].majority
at_chance = control.mean() <= majority + 2 * control.std(ddof=1) / np.sqrt(folds)
page.show_markdown(
    f"Shuffled labels: held out {fmt.percent(control.mean())} (chance {fmt.percent(chance)}, always naming "
    f"the commonest count {fmt.percent(majority)}); on its own training data {fmt.percent(train)}. "
    + ("Held out, the probe sits at chance, where it should: shuffled labels hold nothing to learn. "
       if at_chance else
       "Held out, it stays above what guessing gives by more than two standard errors, which shuffled labels "
       "should not allow: this shuffle may be a lucky one, so try other seeds before reading anything into "
       "it. ")
    + (f"On its training data it does far better: with {last.shape[1]} dimensions and {len(labels)} samples "
       "a linear probe fits labels that mean nothing, so training accuracy cannot tell knowledge from "
       "memory, and only held-out accuracy counts."
       if train > control.mean() + 0.1 else
       "Its training accuracy stays low too: regularisation keeps it from memorising here, but with more "
       "dimensions or fewer samples it would, so only held-out accuracy counts."))
