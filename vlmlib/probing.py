"""Cross-layer linear probes (paper section 2.4, Figure 3), with the controls the paper lacks.

    feats = pooled_features(lm, samples)                  # {"vision", "text"}: (n, L + 1, d)
    labels = [s.category for s in samples]
    res = cross_layer_probes(feats["vision"], labels)     # train on the last four states, test on all
    res.mean, res.std                                     # (train layers, eval layers) held-out accuracy
    res.control_mean                                      # shuffled-label control, per layer
    res.chance, res.majority                              # 1 / classes, majority-class rate

Features come from the observation pass (`vlmlib.observe`, reading "pooled"): for each sample and
each state H^(0..L) (H^(0) the decoder input, H^(l) the raw output of decoder block l - 1, never the
final-norm output), the mean over the image-token positions and the mean over the caption's tokens.
The caption is fed as the text after the image (the sample's question becomes its caption), so the
text positions carry it; by default only the caption's own tokens are pooled, not the fixed template
tokens around it (<bos> and "\\n" for PaliGemma, chat markers for Qwen2-VL).

A probe is scikit-learn's logistic regression on standardised features. It is trained on the
training split of one state H^(t) and evaluated on the held-out split of every state H^(e): the
train-layer x eval-layer accuracy matrix. The split is stratified k-fold cross-validation, so every
sample is tested once and the spread is across folds. Controls, each on the same folds:

- chance: 1 / number of classes, and the majority-class rate of the test folds;
- control task (Hewitt and Liang, 2019): the same probe trained on randomly permuted labels, on each
  layer; held-out accuracy should sit at chance. Its *training* accuracy says how much the probe can
  memorise (with d >= n it fits any labels, which is why held-out accuracy is the number to read);
  selectivity = accuracy - control accuracy;
- own layer: a probe trained and tested on every layer. A probe trained late that fails on an early
  layer may mean the category is absent there, or only that it is encoded differently; this tells
  the two apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

TEXT_TOKENS = ("caption", "all")  # which text positions are pooled: the caption's own, or every non-image one
SCALINGS = ("train_layer", "per_layer")
MIN_PER_CLASS = 2  # fewest samples of a class in any training or test split


class ProbeDataError(ValueError):
    """Features or labels a probe cannot be trained on meaningfully, with what to do about it."""


# ---------------------------------------------------------------- features


def caption_samples(samples: Sequence) -> list:
    """Copies of `samples` whose question is their caption, so the text after the image is the caption."""
    missing = [s.id or str(i) for i, s in enumerate(samples) if not s.caption]
    if missing:
        raise ProbeDataError(f"{len(missing)} samples have no caption (e.g. {missing[:3]}); text probes pool "
                             "the caption's tokens: give every sample a caption (metadata.jsonl 'caption')")
    return [dataclasses.replace(s, question=s.caption) for s in samples]


def probe_labels(samples: Sequence) -> list[str]:
    """Each sample's single category; an error naming the fix if any is missing."""
    missing = [s.id or str(i) for i, s in enumerate(samples) if not s.category]
    if missing:
        raise ProbeDataError(f"{len(missing)} samples have no category (e.g. {missing[:3]}); load them with "
                             "single_category=True, or add 'category' to metadata.jsonl")
    return [s.category for s in samples]


def load_probe_samples(dataset: str, n_samples: int, seed: int = 0) -> list:
    """Single-category samples: each has one object category, the probe's label.

    Too few samples of some category is not patched over here: `cross_layer_probes` refuses them
    with an error that names the short categories and how many more samples are needed.
    """
    from .data import load_samples

    return load_samples(dataset, n_samples, seed=seed, single_category=True)


def template_text_ids(lm, image) -> list[int]:
    """The text tokens the prompt format puts around an empty question (one image, no padding)."""
    inputs = lm.encode([image], [""])
    keep = lm.text_mask(inputs)[0]
    return inputs["input_ids"][0][keep].tolist()


def caption_mask(lm, inputs, template: Sequence[int]) -> torch.Tensor:
    """(batch, T) bool: the text positions that are not the prompt template's.

    Per row, the text tokens (real, not image) are compared with `template` (`template_text_ids`):
    the common prefix and the common suffix are the template's, what lies between is the caption.
    This holds for any tokenizer; a token the tokenizer merges across the boundary counts as caption.
    """
    text = lm.text_mask(inputs)
    mask = torch.zeros_like(text)
    template = list(template)
    for row in range(text.shape[0]):
        positions = text[row].nonzero().flatten()
        ids = inputs["input_ids"][row][positions].tolist()
        p = 0
        while p < min(len(ids), len(template)) and ids[p] == template[p]:
            p += 1
        s = 0
        while s < min(len(ids), len(template)) - p and ids[-1 - s] == template[-1 - s]:
            s += 1
        mask[row, positions[p:len(ids) - s]] = True
    return mask


def pooled_features(lm, samples: Sequence, batch_size: int = 8, text: str = "caption",
                    progress: bool = True) -> dict[str, np.ndarray]:
    """{"vision", "text"}: (n, L + 1, d) mean over image tokens / caption tokens of H^(0..L).

    One observation pass (`vlmlib.observe`, reading "pooled") over the samples with their caption as
    the question. `text="caption"` pools the caption's own tokens, `"all"` every non-image token.
    """
    from .observe import observe

    if text not in TEXT_TOKENS:
        raise ValueError(f"text must be one of {TEXT_TOKENS}, not {text!r}")
    probe = caption_samples(samples)
    pool = {}
    if text == "caption":
        template = template_text_ids(lm, probe[0].image)
        pool["caption"] = lambda inputs: caption_mask(lm, inputs, template)
    obs = observe(lm, probe, readings=("pooled",), batch_size=batch_size, progress=progress,
                  desc="pooled features", pool=pool)
    feats = {"vision": obs.pooled("vision"), "text": obs.pooled("caption" if text == "caption" else "text")}
    for name, f in feats.items():
        empty = ~np.isfinite(f).all(axis=(1, 2))
        if empty.any():
            raise ProbeDataError(f"{int(empty.sum())} samples have no {name} tokens to pool (e.g. sample "
                                 f"{int(empty.argmax())}): check that every caption is non-empty")
    return feats


# ---------------------------------------------------------------- probes


@dataclass
class ProbeResult:
    """Held-out accuracies of cross-layer probes, one entry per fold (spread = across folds)."""

    classes: list[str]
    train_layers: list[int]  # states H^(t) the probes are trained on
    eval_layers: list[int]  # states H^(e) they are evaluated on (all of them)
    accuracy: np.ndarray  # (folds, train layers, eval layers)
    train_accuracy: np.ndarray  # (folds, train layers): on the probe's own training split
    own_layer: np.ndarray  # (folds, eval layers): probe trained and tested on the same layer
    control: np.ndarray  # (folds, eval layers): shuffled-label probe, held-out accuracy
    control_train: np.ndarray  # (folds, eval layers): shuffled-label probe, training accuracy
    majority: float  # mean over test folds of the most frequent class's share
    n_train: int  # training samples per fold (smallest fold)
    n_test: int  # test samples per fold (smallest fold)
    scaling: str = "train_layer"

    @property
    def chance(self) -> float:
        return 1.0 / len(self.classes)

    @property
    def mean(self) -> np.ndarray:
        return self.accuracy.mean(0)

    @property
    def std(self) -> np.ndarray:
        return self.accuracy.std(0, ddof=1) if len(self.accuracy) > 1 else np.zeros(self.mean.shape)

    @property
    def control_mean(self) -> np.ndarray:
        return self.control.mean(0)

    @property
    def control_std(self) -> np.ndarray:
        return self.control.std(0, ddof=1) if len(self.control) > 1 else np.zeros(self.control_mean.shape)

    @property
    def selectivity(self) -> np.ndarray:
        """Own-layer accuracy minus control accuracy, per layer, mean over folds."""
        return (self.own_layer - self.control).mean(0)

    def summary(self) -> dict:
        """JSON-ready numbers."""
        def ms(a):
            return {"mean": a.mean(0), "std": a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1:])}
        return {
            "classes": self.classes, "train_layers": self.train_layers, "eval_layers": self.eval_layers,
            "folds": len(self.accuracy), "n_train": self.n_train, "n_test": self.n_test, "scaling": self.scaling,
            "chance": self.chance, "majority": self.majority,
            "accuracy": ms(self.accuracy), "train_accuracy": ms(self.train_accuracy),
            "own_layer": ms(self.own_layer), "control": ms(self.control),
            "control_train": ms(self.control_train), "selectivity": self.selectivity,
        }


def last_layers(num_states: int, k: int = 4) -> list[int]:
    """The last k states H^(S-k..S-1): with S = L + 1 states, the outputs of the last k decoder blocks."""
    if not 1 <= k <= num_states:
        raise ValueError(f"cannot take the last {k} of {num_states} states")
    return list(range(num_states - k, num_states))


def _check(features, labels, folds: int):
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 3:
        raise ProbeDataError(f"features should be (samples, layers, dim), got shape {features.shape}")
    if len(labels) != len(features):
        raise ProbeDataError(f"{len(features)} feature rows but {len(labels)} labels")
    if not np.isfinite(features).all():
        raise ProbeDataError("features contain NaN or infinity (a sample with no tokens to pool?)")
    if folds < 2:
        raise ValueError(f"folds must be at least 2 (held-out evaluation), got {folds}")
    classes, y = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    if len(classes) < 2:
        raise ProbeDataError(f"probing needs at least two categories; all {len(labels)} samples are "
                             f"{classes.tolist()}")
    counts = np.bincount(y)
    need = MIN_PER_CLASS * folds  # every test fold holds >= 2 of each class, every training split more
    few = {str(c): int(n) for c, n in zip(classes, counts) if n < need}
    if few:
        raise ProbeDataError(
            f"too few samples per class for {folds}-fold held-out probing: {few} (of {len(labels)} samples). "
            f"Each class needs at least {need} ({MIN_PER_CLASS} per test fold), or the accuracy matrix would "
            f"be meaningless: raise n_samples (about {int(np.ceil(need * len(labels) / counts.min()))} here) "
            f"or lower folds.")
    return features, classes, y


def _probe(C: float, max_iter: int, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, random_state=seed)


def cross_layer_probes(features, labels: Sequence, train_layers: Sequence[int] | None = None, folds: int = 5,
                       seed: int = 0, scaling: str = "train_layer", C: float = 1.0, max_iter: int = 300,
                       controls: bool = True) -> ProbeResult:
    """Train a probe on each state in `train_layers` (default: the last four), evaluate it on every state.

    `features`: (n, S, d), e.g. `pooled_features(...)["vision"]`; `labels`: n category names.
    `scaling`: "train_layer" standardises with the training layer's statistics everywhere (the probe is
    one fixed function); "per_layer" standardises each evaluated layer with its own training-split
    statistics (no labels used), which removes the growth of the residual stream's scale.
    With `controls`, also the own-layer probe and the shuffled-label control on every layer.
    `max_iter`: 300 gave the same accuracies (to two decimals) as 2000 on the organisms' features, 5x
    faster; separable or shuffled labels otherwise keep L-BFGS iterating for little change.
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, not {scaling!r}")
    X, classes, y = _check(features, labels, folds)
    n, S, _ = X.shape
    train_layers = last_layers(S) if train_layers is None else [int(t) for t in train_layers]
    bad = [t for t in train_layers if not 0 <= t < S]
    if bad:
        raise ValueError(f"train layers {bad} out of range: the features have states 0..{S - 1}")
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n), y))
    y_control = np.random.default_rng(seed).permutation(y)  # Hewitt-Liang control: random labels

    acc = np.zeros((folds, len(train_layers), S))
    train_acc = np.zeros((folds, len(train_layers)))
    own = np.full((folds, S), np.nan)
    ctrl = np.full((folds, S), np.nan)
    ctrl_train = np.full((folds, S), np.nan)
    majority = []
    for f, (tr, te) in enumerate(splits):
        majority.append(np.bincount(y[te]).max() / len(te))
        scalers = [StandardScaler().fit(X[tr, e]) for e in range(S)]
        Z_tr = [scalers[e].transform(X[tr, e]) for e in range(S)]
        for i, t in enumerate(train_layers):
            probe = _probe(C, max_iter, seed).fit(Z_tr[t], y[tr])
            train_acc[f, i] = probe.score(Z_tr[t], y[tr])
            for e in range(S):
                scaler = scalers[t] if scaling == "train_layer" else scalers[e]
                acc[f, i, e] = probe.score(scaler.transform(X[te, e]), y[te])
        if controls:
            for e in range(S):
                Z_te = scalers[e].transform(X[te, e])
                own[f, e] = _probe(C, max_iter, seed).fit(Z_tr[e], y[tr]).score(Z_te, y[te])
                control = _probe(C, max_iter, seed).fit(Z_tr[e], y_control[tr])
                ctrl[f, e] = control.score(Z_te, y_control[te])
                ctrl_train[f, e] = control.score(Z_tr[e], y_control[tr])
    return ProbeResult(classes=classes.tolist(), train_layers=train_layers, eval_layers=list(range(S)),
                       accuracy=acc, train_accuracy=train_acc, own_layer=own, control=ctrl,
                       control_train=ctrl_train, majority=float(np.mean(majority)),
                       n_train=min(len(tr) for tr, _ in splits), n_test=min(len(te) for _, te in splits),
                       scaling=scaling)


# ---------------------------------------------------------------- beside the paper


def paper_style_summary(result: ProbeResult) -> dict:
    """Our numbers in the paper's terms: accuracy of the late-trained probes on the other layers (the
    paper's "plateau", about 55-63%) and on the trained layers themselves (its "spike", about 90%)."""
    mean = result.mean.mean(0)  # averaged over the train layers, per eval layer
    trained = [e for e in result.eval_layers if e in result.train_layers]
    others = [e for e in result.eval_layers if e not in result.train_layers]
    return {
        "plateau_layers": others,
        "plateau_min": float(mean[others].min()) if others else float("nan"),
        "plateau_max": float(mean[others].max()) if others else float("nan"),
        "plateau_mean": float(mean[others].mean()) if others else float("nan"),
        "trained_layers": trained,
        "trained_layers_mean": float(mean[trained].mean()),
        "diagonal_mean": float(np.mean([result.mean[i, t] for i, t in enumerate(result.train_layers)])),
        "own_layer_mean": float(np.nanmean(result.own_layer.mean(0))),
        "control_mean": float(np.nanmean(result.control_mean)),
        "chance": result.chance,
        "majority": result.majority,
    }


def probe_figure(results: dict, paper: dict | None = None, title: str = ""):
    """Figure 3 redrawn: per modality, accuracy on every layer of probes trained on the last four, with
    fold spread, chance, majority, the shuffled-label control, the own-layer probe; heatmaps below."""
    import matplotlib.pyplot as plt

    mods = list(results)
    fig, axes = plt.subplots(2, len(mods), figsize=(5.5 * len(mods), 7.2), squeeze=False,
                             gridspec_kw={"height_ratios": [1.3, 1]})
    for j, mod in enumerate(mods):
        res, ax = results[mod], axes[0, j]
        x = np.array(res.eval_layers)
        colours = plt.cm.viridis(np.linspace(0.1, 0.85, len(res.train_layers)))
        for i, t in enumerate(res.train_layers):
            ax.plot(x, res.mean[i], marker="o", ms=3, color=colours[i], label=f"trained on H$^{{({t})}}$")
            ax.fill_between(x, res.mean[i] - res.std[i], res.mean[i] + res.std[i], color=colours[i], alpha=0.15)
        if np.isfinite(res.own_layer).all():
            ax.plot(x, res.own_layer.mean(0), ls="--", color="black", lw=1, label="trained on the same layer")
        if np.isfinite(res.control).all():
            ax.plot(x, res.control_mean, ls=":", color="tab:red", label="control: shuffled labels")
            ax.fill_between(x, res.control_mean - res.control_std, res.control_mean + res.control_std,
                            color="tab:red", alpha=0.1)
        ax.axhline(res.chance, color="grey", lw=1, label=f"chance 1/{len(res.classes)}")
        ax.axhline(res.majority, color="grey", lw=1, ls="--", label="majority class")
        if paper:
            lo, hi = paper.get("plateau_accuracy", [None, None])
            if lo is not None:
                ax.axhspan(lo, hi, color="tab:orange", alpha=0.12, label="paper: plateau (55-63%)")
            if paper.get("spike_accuracy") is not None:
                ax.axhline(paper["spike_accuracy"], color="tab:orange", ls="-.", lw=1, label="paper: spike (~90%)")
        ax.set(ylim=(0, 1.03), xlabel="evaluated on state H$^{(l)}$", ylabel="held-out accuracy",
               title=f"{mod} tokens")
        ax.legend(fontsize=7, loc="best")
        hm = axes[1, j]
        im = hm.imshow(res.mean, vmin=0, vmax=1, cmap="magma", aspect="auto")
        hm.set(yticks=range(len(res.train_layers)), yticklabels=[str(t) for t in res.train_layers],
               xlabel="eval state l", ylabel="train state", title=f"{mod}: train x eval accuracy")
        hm.set_xticks(range(len(x)))
        for i in range(len(res.train_layers)):
            for e in range(len(x)):
                hm.text(e, i, f"{res.mean[i, e]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if res.mean[i, e] < 0.6 else "black")
        fig.colorbar(im, ax=hm, fraction=0.03)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


__all__ = ["pooled_features", "load_probe_samples", "caption_samples", "probe_labels", "caption_mask", "template_text_ids",
           "cross_layer_probes", "ProbeResult", "ProbeDataError", "last_layers", "paper_style_summary",
           "probe_figure", "TEXT_TOKENS", "SCALINGS"]
