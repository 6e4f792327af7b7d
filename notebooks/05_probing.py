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
n_samples = 120  # at least 2 x folds samples of every category, or the probes refuse to run
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "05_probing.json"  # where this chapter writes its numbers
train_last = 4  # probes are trained on each of the last `train_last` states
folds = 5  # stratified k-fold cross-validation: the held-out split and the spread
scaling = "train_layer"  # "train_layer" (the probe is one fixed function) or "per_layer" standardisation
text_tokens = "caption"  # pool the caption's own tokens, or "all" non-image tokens

# %% tags=["remove-input"]
import matplotlib.pyplot as plt
import numpy as np

from vlmlib.models import load_model
from vlmlib.plots import COLUMN_WIDTH, integer_ticks, use_book_style
from vlmlib.probing import (cross_layer_probes, last_layers, load_probe_samples, paper_style_summary,
                            pooled_features, probe_figure, probe_labels)
from vlmlib.report import paper_values, run_info, show_conclusion, show_header, show_markdown, write_results

use_book_style()
lm = load_model(model, device=device, dtype=dtype)
samples = load_probe_samples(dataset, n_samples, seed=seed)
labels = probe_labels(samples)
paper = paper_values("figure3_probing").get(lm.family.name, {})
train_layers = last_layers(lm.num_layers + 1, train_last)
show_header(lm, dict(dataset=dataset, n_samples=n_samples, seed=seed, batch_size=batch_size, device=device,
                     dtype=dtype, train_last=train_last, folds=folds, scaling=scaling, text_tokens=text_tokens),
            n_used=len(samples))

# %% [markdown]
# **Learning objectives.** After this chapter you can (1) train a linear probe on pooled hidden states
# and read its held-out accuracy, (2) use chance, a shuffled-label control task and own-layer probes to
# tell what a probe's number means, and (3) separate "the information is absent" from "the probe does
# not transfer to this layer".
#
# **Question.** Is the object category in an image linearly readable from the decoder's states, and
# does a probe trained on the last layers still read it from earlier ones? If the decoder carried the
# image tokens forward unchanged until late layers ("process, then retrieve"), a late probe would
# transfer to earlier layers.
#
# **Method.** For each sample and each state $H^{(l)}$, $l = 0..L$ ($H^{(0)}$ the decoder input with the
# image features merged in, $H^{(l)}$ the raw output of decoder block $l-1$, never the final-norm output)
# we pool two features from one observation pass (`vlmlib.observe`, reading `pooled`):
#
# - **vision**: the mean of $H_t^{(l)}$ over the image-token positions $t \in I_\text{vis}$;
# - **text**: the mean over the caption's tokens. The caption is fed as the text after the image, so
#   the text positions carry it; only the caption's own tokens are pooled, not the prompt template
#   around it (`text_tokens = "all"` pools every non-image token instead).
#
# A probe is a logistic regression (scikit-learn) on standardised features. We train one on each of
# the last four states and evaluate it on **every** state: the train-layer $\times$ eval-layer accuracy
# matrix. Accuracy is always on held-out samples: stratified $k$-fold cross-validation, so each
# sample is tested once and the spread is across folds. The paper gives neither a chance level nor a
# control, so we add:
#
# - **chance** $1/K$ for $K$ categories, and the majority-class rate of the test folds;
# - a **control task** (Hewitt and Liang, 2019): the same probe trained on randomly permuted labels,
#   on every layer. Its held-out accuracy must sit at chance; if it does not, the pipeline leaks.
#   Its training accuracy shows how much the probe can memorise: with more dimensions than samples
#   it fits any labels, which is why only held-out numbers mean anything here;
# - an **own-layer probe**, trained and tested on each layer. A late probe failing on an early layer
#   can mean the category is absent there, or only that it is written in another basis; the
#   own-layer probe tells these apart.
#
# Data: single-category `shapes` images (six shape categories; the caption names the shape, e.g.
# "2 red circles"), or a local imagefolder whose metadata gives a `category`. The paper used
# PixelProse captions naming exactly one of dog, cat, car, person, tree, building.
#
# **Paper's finding (PaliGemma-3B).** Probe accuracy stays about 55-63% across layers, then spikes
# to about 90% in layers 14-18, for both vision and text; it is highest on the layers the probe was
# trained on and degrades on earlier layers.


# %% tags=["remove-input"]
counts = {str(c): int(k) for c, k in zip(*np.unique(labels, return_counts=True))}
show_markdown(f"{len(samples)} single-category samples, per category: "
              + ", ".join(f"{c} {k}" for c, k in counts.items())
              + f". First caption: *{samples[0].caption}*. Probes are trained on states "
              f"{', '.join(str(l) for l in train_layers)} (the outputs of the last {train_last} decoder blocks) and "
              f"evaluated on states 0 to {lm.num_layers}.")

# %% [markdown]
# ## One observation pass: pooled features

# %% tags=["hide-input"]
features = pooled_features(lm, samples, batch_size=batch_size, text=text_tokens)

# %% [markdown]
# ## Probes: train on the last layers, evaluate on every layer (Figure 3)

# %% tags=["hide-input"]
probes = {m: cross_layer_probes(features[m], labels, train_layers=train_layers, folds=folds, seed=seed,
                                scaling=scaling) for m in ("vision", "text")}
fig = probe_figure(probes, paper=paper,
                   title=f"{lm.name}: cross-layer linear probes ({folds}-fold held-out accuracy)")
plt.show()

# %% [markdown]
# Top: held-out accuracy of each late-trained probe on every state, the band one standard deviation
# across folds; the dashed black line a probe trained on that same layer; the dotted red line the
# shuffled-label control; grey lines chance and the majority-class rate. The paper's caption values
# (PaliGemma-3B) are drawn in orange where the family matches. Bottom: the train x eval matrix.

# %% tags=["remove-input"]
def pct(x):
    return f"{100 * x:.0f}%"


ours = {m: paper_style_summary(r) for m, r in probes.items()}
rows = ["| | paper (PaliGemma-3B, PixelProse) | ours: vision | ours: text |", "|---|---|---|---|"]
rows.append(f"| late probes on the other layers | {pct(0.55)}-{pct(0.63)} | "
            + " | ".join(f"{pct(o['plateau_min'])}-{pct(o['plateau_max'])} (states {o['plateau_layers'][0]}-"
                         f"{o['plateau_layers'][-1]})" if o["plateau_layers"] else "-" for o in ours.values()) + " |")
rows.append(f"| late probes on the trained layers | about {pct(0.90)} (layers 14-18) | "
            + " | ".join(f"{pct(o['trained_layers_mean'])} (states {o['trained_layers'][0]}-{o['trained_layers'][-1]}); "
                         f"{pct(o['diagonal_mean'])} on its own training state" for o in ours.values()) + " |")
rows.append("| probe trained and tested on the same layer (mean over layers) | not reported | "
            + " | ".join(pct(o["own_layer_mean"]) for o in ours.values()) + " |")
rows.append("| shuffled-label control (mean over layers) | not reported | "
            + " | ".join(pct(o["control_mean"]) for o in ours.values()) + " |")
rows.append("| chance / majority class | not reported | "
            + " | ".join(f"{pct(o['chance'])} / {pct(o['majority'])}" for o in ours.values()) + " |")
show_markdown("\n".join(rows))

# %% [markdown]
# How we read the paper: its "layers 14-18" are the states the probes were trained on (the last
# ones), its 55-63% the accuracy of those probes on the other layers. It gives no spread, split,
# chance level or control; with six balanced categories chance is about 17%.
#
# A caution on text probes, ours and the paper's: the caption names the category (here "2 red
# circles"; in the paper's subset, by construction, "dog", "cat", ...). The category word's own
# embedding is in the pooled text feature from $H^{(0)}$ on, so a text probe trained on a layer can
# read it there: the own-layer probe at state 0 shows how well. Where a late-trained probe scores
# lower on an early layer than the own-layer probe does, the information is there and the probe
# does not transfer; it is not that the early layers lack it.

# %% [markdown]
# ## Does a late probe fail on early layers only because of scale?
#
# The residual stream grows across layers, so a probe standardised with a late layer's statistics
# sees early-layer features far off its scale. We refit nothing: the same probes, with each evaluated
# layer standardised by its own training-split mean and deviation (no labels involved) instead.

# %% tags=["hide-input"]
other = "per_layer" if scaling == "train_layer" else "train_layer"
rescaled = {m: cross_layer_probes(features[m], labels, train_layers=train_layers, folds=folds, seed=seed,
                                  scaling=other, controls=False) for m in probes}
fig, axes = plt.subplots(len(probes), 1, figsize=(COLUMN_WIDTH, 2.8 * len(probes)), squeeze=False, sharex=True)
for ax, m in zip(axes[:, 0], probes):
    for res, name, ls in ((probes[m], scaling, "-"), (rescaled[m], other, "--")):
        ax.plot(res.eval_layers, res.mean.mean(0), ls=ls, marker="o", ms=3, label=f"standardised: {name}")
    ax.axhline(probes[m].chance, color="grey", lw=1, label="chance")
    ax.set(ylim=(0, 1.03), xlabel="evaluated on state H$^{(l)}$", ylabel="accuracy (mean of the late probes)",
           title=f"{m} tokens")
    integer_ticks(ax)
    ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What this run shows

# %% tags=["remove-input"]
def sentence(mod, r, o):
    best = r.eval_layers[int(np.argmax(r.own_layer.mean(0)))]
    return (f"{mod.capitalize()} features: the late probes score {pct(o['trained_layers_mean'])} on the states they were "
            f"trained on and {pct(o['plateau_min'])}-{pct(o['plateau_max'])} on the other states; a probe trained on "
            f"each state itself averages {pct(o['own_layer_mean'])} (best at state {best}); the shuffled-label "
            f"control scores {pct(o['control_mean'])} against a chance level of {pct(o['chance'])}; with {other} "
            f"standardisation the late probes score {pct(alt[mod]['plateau_min'])}-{pct(alt[mod]['plateau_max'])} "
            "on the other states.")


alt = {m: paper_style_summary(r) for m, r in rescaled.items()}
points = [sentence(m, probes[m], ours[m]) for m in probes]
if not lm.trained:
    points.append("These are random weights: whatever is decodable comes from the input embeddings and the random "
                  "vision tower carried through the stream, not from anything the model learned.")
show_conclusion(points)

# %% tags=["remove-cell"]
write_results(results, {
    **run_info(lm, dataset=dataset, n_samples=n_samples, batch_size=batch_size, seed=seed,
               train_last=train_last, folds=folds, scaling=scaling, text_tokens=text_tokens),
    "chapter": "05_probing",
    "n_samples_used": len(samples),
    "layer_note": "state l is H^(l): 0 = decoder input, l >= 1 = raw output of decoder block l - 1",
    "category_counts": counts,
    "probes": {m: r.summary() for m, r in probes.items()},
    "probes_other_scaling": {m: r.summary() for m, r in rescaled.items()},
    "summary": ours,
    "summary_other_scaling": alt,
    "paper": paper,
});
