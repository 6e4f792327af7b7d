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
# **Learning objectives.** After this chapter you can (1) train a linear probe on pooled hidden states
# and read its held-out accuracy, (2) use chance, a shuffled-label control task and own-layer probes to
# tell what a probe's number means, (3) separate "the information is absent" from "the probe does not
# transfer to this layer", and (4) spot and remove a confound: a text feature that contains the answer.
#
# **Question.** Is the object category in an image linearly readable from the decoder's states, and
# does a probe trained on the last layers still read it from earlier ones? If the decoder carried the
# image tokens forward unchanged until late layers ("process, then retrieve"), a late probe would
# transfer to earlier layers.
#
# **Method.** For each sample and each state $H^{(l)}$, $l = 0..L$ ($H^{(0)}$ the decoder input with the
# image features merged in, $H^{(l)}$ the raw output of decoder block $l-1$, never the final-norm output)
# we average the state over a set of token positions (`vlmlib.observation`, reading `pooled`). Three
# prompts follow the image, one observation pass each, and give six feature sets:
#
# | feature set | text after the image | tokens averaged |
# |---|---|---|
# | `vision` | the caption | the image tokens |
# | `vision_question` | the counting question | the image tokens |
# | `caption` | the caption | the caption's own tokens (not the prompt template's) |
# | `caption_masked` | the caption | the caption's tokens except the category word's |
# | `caption_deleted` | the caption with the category word deleted | what is left of the caption |
# | `question` | the counting question, "How many objects are in the image?" | the question's own tokens |
#
# Why six. The caption names the category ("2 red circles"), so a probe on `caption` reads the
# word's own embedding from $H^{(0)}$ on: near-trivial. `caption_masked` keeps the word in the input
# but out of the average, so at $H^{(0)}$ the averaged tokens carry no category and later states only
# what attention moved into them. `caption_deleted` removes the word from the input, so whatever
# category the text tokens carry came from the image. `question` is the prompt the organisms were
# trained on and the paper's VQA prompt: the same text for every sample, so a probe can only read what
# flowed in from the image. Category words are removed the same way from every caption whatever its
# label: every class name, its plural (-s, -es) and a few irregular plurals, as whole words; a token
# that overlaps one is left out. Synonyms are not caught. PaliGemma's prefix (image and prompt)
# attends both ways, so its image tokens see the caption too: `vision` carries the same confound
# there, `vision_question` does not. In Qwen2-VL the image comes first and attends only backwards,
# so the two vision sets are identical.
#
# A probe is a logistic regression (scikit-learn) on standardised features. We train one on each of
# the last four states and evaluate it on **every** state. Accuracy is always on held-out samples:
# stratified $k$-fold cross-validation, so each sample is tested once and the spread is across folds.
# The paper gives neither a chance level nor a control, so we add:
#
# - **chance** $1/K$ for $K$ categories, and the majority-class rate of the test folds;
# - a {term}`control task` {cite:p}`hewitt2019designing`: the same probe trained on randomly permuted labels,
#   on every layer. Its held-out accuracy must sit at chance; if it does not, the pipeline leaks;
# - an **own-layer probe**, trained and tested on each layer. A late probe failing on an early layer
#   can mean the category is absent there, or only that it is written in another basis; the
#   own-layer probe tells these apart.
#
# Data: single-category `shapes` images (six shape categories; the caption names the shape), or a
# local imagefolder whose metadata gives a `category`. The paper used PixelProse captions naming
# exactly one of dog, cat, car, person, tree, building; it does not say how many.
#
# **Paper's finding (PaliGemma-3B).** Probe accuracy stays about 55-63% across layers, then spikes
# to about 90% in layers 14-18, for both vision and text; it is highest on the layers the probe was
# trained on and degrades on earlier layers.
#
# **How we read the paper.** Its "layers 14-18" are the states the probes were trained on (the last
# ones), its 55-63% the accuracy of those probes on the other layers. The claim we test is the drop:
# the probe trained on the last state, evaluated on the last state and on the early states (those
# outside the four train states). It gives no spread, split, chance level or control, and does not
# say which text it pooled; "text-token embeddings" of a PixelProse caption would contain the category
# word, like our `caption` set.

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

# %% [markdown]
# ```{glue:figure} probes
# ---
# alt: >-
#   One panel per feature set, held-out accuracy of linear probes over the states of the decoder: a
#   probe trained on the last state and evaluated on every state, probes trained on the other late
#   states, a probe trained on each state itself, a shuffled-label control, and chance.
# ---
# Where the object's category can be read, one panel per feature set: held-out accuracy on every state
# of the probe trained on the last state (bold, with circles; band: one standard deviation across
# folds), of the probes trained on the other late states (thin), of a probe trained and tested on that
# same state (dashed), of the shuffled-label control (dotted), and chance (long dashes). Where the
# family matches, the paper's plateau and trained-layer accuracy are drawn in orange.
# ```

# %% tags=["remove-input"]
page.show_markdown(probing.results_table(payload, paper, folds))

# %% [markdown]
# The controls, and the question whether a late probe fails on early states only because the
# residual stream's scale grows: the same probes, with each evaluated state standardised by its own
# training-split mean and deviation (no labels involved) instead of the training state's.

# %% tags=["remove-input"]
page.show_markdown(probing.controls_table(payload, probing.other_scaling(scaling)))

# %% [markdown]
# ## What this run shows
#
# Our numbers, then the verdict of each claim of the paper this chapter answers, by the explicit rules
# of the [What holds](../what-holds.md) page. Every number of this page is in its results file,
# {download}`05_probing.json <05_probing.json>`.

# %% tags=["remove-input"]
run.finish({
    "n_samples_used": len(samples),
    "layer_note": "state l is H^(l): 0 = decoder input, l >= 1 = raw output of decoder block l - 1",
    "category_counts": counts,
    "captions_naming_category": naming,
    **payload,
    "paper": paper,
}, probing.conclusion_points(payload))

# %% [markdown]
# ## Exercises
#
# 1. **A probe by hand.** Train a logistic regression (scikit-learn) on the last state of the
#    `vision_question` features, cross-validated over as many folds as the chapter used, and compare
#    its held-out accuracy with the chapter's own-layer probe on that state.
# 2. **The control task by hand.** Shuffle the labels and train the same probe again. Where should its
#    held-out accuracy sit, and why does training accuracy say nothing here?

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 1", "code_prompt_hide": "Hide solution 1"}
# Solution 1
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

last = features["vision_question"][:, -1]
probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
by_hand = cross_val_score(probe, last, labels, cv=folds)
page.show_markdown(f"By hand: {fmt.percent(by_hand.mean(), by_hand.std(ddof=1))} (fold s.d.) on state "
                   f"{lm.num_layers}; the chapter's own-layer probe: "
                   f"{fmt.percent(probes['vision_question'].own_layer.mean(0)[-1])}.")

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Show solution 2", "code_prompt_hide": "Hide solution 2"}
# Solution 2
shuffled = np.random.default_rng(seed).permutation(labels)
control = cross_val_score(probe, last, shuffled, cv=folds)
train = probe.fit(last, shuffled).score(last, shuffled)
page.show_markdown(f"Shuffled labels: held out {fmt.percent(control.mean())} (chance "
                   f"{fmt.percent(1 / len(set(labels)))}); on its own training data {fmt.percent(train)}. "
                   f"With {last.shape[1]} dimensions and {len(labels)} "
                   "samples a linear probe can fit labels that mean nothing, so only held-out accuracy "
                   "counts.")
