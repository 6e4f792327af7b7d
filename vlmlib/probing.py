"""Cross-layer linear probes (paper section 2.4, Figure 3), with the controls the paper lacks.

    labels = probe_labels(samples)
    feats = pooled_features(lm, samples)                  # {feature set: (n, L + 1, d)}
    res = cross_layer_probes(feats["question"], labels)   # train on the last four states, test on all
    res.mean, res.std                                     # (train layers, eval layers) held-out accuracy
    res.own_layer, res.control                            # (folds, states): same-layer probe, shuffled labels
    res.chance, res.majority                              # 1 / classes, majority-class rate
    both = probes_by_scaling(feats["question"], labels)   # {scaling: ProbeResult} from one set of fits
    payload = probing_results(probes, rescaled)           # what chapter 5 writes; never a NaN or null

Features. For each sample and each state H^(0..L) (H^(0) the decoder input, H^(l) the raw output of
decoder block l - 1, never the final-norm output) a feature set is the mean of the state over some
token positions, read in one observation pass (`vlmlib.observation`, reading "pooled") per prompt:

    set               prompt (the text after the image)      tokens pooled
    vision            the caption                            the image tokens
    vision_question   the sample's question (counting)       the image tokens
    caption           the caption                            the caption's own tokens
    caption_masked    the caption                            the caption's tokens except the category word's
    caption_deleted   the caption, category words deleted    what is left of the caption
    question          the sample's question (counting)       the question's own tokens
    text_all          the caption                            every non-image token (template included)

"Own tokens" are the text positions the prompt template does not put there (`own_text_mask`): not
<bos> and "\\n" (PaliGemma), not the chat markers (Qwen2-VL).

Why so many. The caption names the category ("2 red circles"), so a probe on `caption` can read the
word's own embedding from H^(0) on: near-trivial. `caption_masked` leaves the word in the input but
out of the pool: at H^(0) the pooled tokens carry no category, later states only what attention moved
into the other tokens (from the word or from the image). `caption_deleted` takes the word out of the
input, so any category the text tokens carry came from the image. `question` is the paper's setting
(the organisms were trained on it): a fixed question, identical text for every sample, so a probe
reads only what flowed in from the image. Category words are found label-agnostically: every form
(`category_forms`: the name, its plural with -s / -es, a few irregular plurals) of *every* class,
as whole words, case-insensitive, in the decoded caption tokens; a token overlapping one is masked.
Synonyms ("puppy" for dog) are not caught. PaliGemma's prefix attends both ways, so its image tokens
see the caption too: `vision` is confounded there as well, `vision_question` is not.

Probes. scikit-learn's logistic regression on standardised features (fitted by `fit_logistic`, which
gives LogisticRegression's coefficients bit for bit at less cost per call), trained on the training
split of one state H^(t) and evaluated on the held-out split of every state H^(e): the train x eval
accuracy matrix. Stratified k-fold cross-validation: every sample is tested once, spreads are across
folds (sample standard deviation, ddof = 1). Controls, each on the same folds:

- chance: 1 / number of classes, and the majority-class rate of the test folds;
- control task (Hewitt and Liang, 2019): the same probe trained on randomly permuted labels, on each
  layer; held-out accuracy should sit at chance. Its training accuracy says how much the probe can
  memorise; selectivity = own-layer accuracy - control accuracy;
- own layer: a probe trained and tested on every layer. A probe trained late that fails on an early
  layer may mean the category is absent there, or only that it is encoded differently; this tells
  the two apart.

Results names (`probing_results`; stable, read by the book's pages). Per feature set `s`:

    probes[s]: classes, train_layers, eval_layers, folds, n_train, n_test, scaling, chance, majority,
        accuracy {mean, std}            (train layers, eval states) held-out accuracy
        transfer_from_last {mean, std}  (states,) the probe trained on the last state, on every state
        own_layer {mean, std}           (states,) probe trained and tested on that state
        control {mean, std}             (states,) shuffled-label probe, held-out
        control_train {mean, std}, train_accuracy {mean, std}, selectivity (states,)
    summary[s] (scalars; *_std across folds):
        plateau_layers, plateau_min/max/mean     late probes (mean of the train layers) on the other states
        trained_layers, trained_layers_mean, diagonal_mean
        last_state, early_states                 the last state; the states outside the train layers
        transfer_on_last_mean/_std               last-state probe on the last state
        transfer_on_early_mean/_std              last-state probe, mean over the early states
        transfer_drop_mean/_std                  on_last - on_early per fold: the paper's claim is > 0
        own_on_early_mean/_std                   own-layer probes on the early states (is it there?)
        own_layer_mean/_std, control_mean/_std   mean over every state
        chance, majority, folds
    probes_other_scaling[s]: the same late probes with the other standardisation; accuracy,
        transfer_from_last and the summary's transfer_* and plateau_* numbers only (the own-layer
        probe and the control do not depend on it).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .params import as_names

FEATURE_SETS = {
    "vision": "image tokens, the caption as the prompt",
    "vision_question": "image tokens, the question as the prompt",
    "caption": "the caption's tokens",
    "caption_masked": "the caption's tokens except the category word's",
    "caption_deleted": "the caption's tokens, the category word deleted from the input",
    "question": "the question prompt's tokens",
    "text_all": "every non-image token, the caption as the prompt",
}
DEFAULT_FEATURE_SETS = (
    "vision",
    "vision_question",
    "caption",
    "caption_masked",
    "caption_deleted",
    "question",
)
PROMPT_OF = {
    "vision": "caption",
    "caption": "caption",
    "caption_masked": "caption",
    "text_all": "caption",
    "caption_deleted": "caption_deleted",
    "vision_question": "question",
    "question": "question",
}
SCALINGS = ("train_layer", "per_layer")
MIN_PER_CLASS = 2  # fewest samples of a class in any training or test split
IRREGULAR_PLURALS = {
    "person": ("people", "persons"),
    "man": ("men",),
    "woman": ("women",),
    "child": ("children",),
    "mouse": ("mice",),
    "goose": ("geese",),
    "foot": ("feet",),
    "tooth": ("teeth",),
    "leaf": ("leaves",),
    "knife": ("knives",),
    "wolf": ("wolves",),
    "sheep": ("sheep",),
    "fish": ("fish",),
    "bus": ("buses",),
    "box": ("boxes",),
}


class ProbeDataError(ValueError):
    """Features or labels a probe cannot be trained on meaningfully, with what to do about it."""


# ---------------------------------------------------------------- samples and labels


def caption_samples(samples: Sequence) -> list:
    """Copies of `samples` whose question is their caption, so the text after the image is the caption."""
    missing = [s.id or str(i) for i, s in enumerate(samples) if not s.caption]
    if missing:
        raise ProbeDataError(
            f"{len(missing)} samples have no caption (e.g. {missing[:3]}); text probes pool "
            "the caption's tokens: give every sample a caption (metadata.jsonl 'caption')"
        )
    return [dataclasses.replace(s, question=s.caption) for s in samples]


def probe_labels(samples: Sequence) -> list[str]:
    """Each sample's single category; an error naming the fix if any is missing."""
    missing = [s.id or str(i) for i, s in enumerate(samples) if not s.category]
    if missing:
        raise ProbeDataError(
            f"{len(missing)} samples have no category (e.g. {missing[:3]}); load them with "
            "single_category=True, or add 'category' to metadata.jsonl"
        )
    return [s.category for s in samples]


def load_probe_samples(
    dataset: str, n_samples: int, seed: int = 0, image_size: int | None = None, question: str | None = None
) -> list:
    """Single-category samples: each has one object category, the probe's label. `image_size` and
    `question` as for `vlmlib.data.load_samples`.

    Too few samples of some category is not patched over here: `cross_layer_probes` refuses them
    with an error that names the short categories and how many more samples are needed.
    """
    from .data import load_samples

    return load_samples(
        dataset, n_samples, seed=seed, single_category=True, image_size=image_size, question=question
    )


# ---------------------------------------------------------------- category words


def category_forms(category: str) -> list[str]:
    """The word forms of a category masked or deleted from captions: singular, -s and -es plurals, and
    the irregular plural where `IRREGULAR_PLURALS` knows one."""
    word = category.strip().lower()
    if not word:
        raise ProbeDataError("an empty category name: every sample needs a non-empty 'category'")
    return sorted(
        {word, word + "s", word + "es", *IRREGULAR_PLURALS.get(word, ())}, key=lambda w: (-len(w), w)
    )


def category_pattern(categories: Iterable[str]) -> re.Pattern:
    """Whole-word, case-insensitive matches of every form of every category (longest first)."""
    forms = sorted({f for c in categories for f in category_forms(c)}, key=lambda w: (-len(w), w))
    if not forms:
        raise ProbeDataError("no categories given: masking the category word needs the list of categories")
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(f) for f in forms) + r")(?!\w)", re.IGNORECASE)


def delete_category_words(text: str, pattern: re.Pattern) -> str:
    """`text` without the category words (whitespace collapsed)."""
    return " ".join(pattern.sub(" ", text).split())


def names_category(sample, pattern: re.Pattern | None = None) -> bool:
    """Whether the sample's caption names any form of its own category."""
    pattern = pattern or category_pattern([sample.category])
    return bool(
        sample.caption
        and sample.category
        and any(
            m.group(0).lower() in category_forms(sample.category) for m in pattern.finditer(sample.caption)
        )
    )


def deleted_caption_samples(samples: Sequence, pattern: re.Pattern) -> list:
    """Copies of `samples` whose question is their caption with the category words deleted."""
    probe = caption_samples(samples)
    out = []
    for s in probe:
        text = delete_category_words(s.question, pattern)
        if not re.search(r"\w", text):
            raise ProbeDataError(
                f"sample {s.id!r}: caption {s.caption!r} is nothing but category words, so "
                "'caption_deleted' has no tokens to pool: drop that feature set or the sample"
            )
        out.append(dataclasses.replace(s, question=text))
    return out


# ---------------------------------------------------------------- token masks


def template_text_ids(lm, image) -> list[int]:
    """The text tokens the prompt format puts around an empty question (one image, no padding)."""
    inputs = lm.encode([image], [""])
    keep = lm.text_mask(inputs)[0]
    return inputs["input_ids"][0][keep].tolist()


def own_text_mask(lm, inputs, template: Sequence[int]) -> torch.Tensor:
    """(batch, T) bool: the text positions that are not the prompt template's: the question's own tokens.

    Per row, the text tokens (real, not image) are compared with `template` (`template_text_ids`):
    the common prefix and the common suffix are the template's, what lies between is the question
    (here the caption, or the counting question). This holds for any tokenizer; a token the
    tokenizer merges across the boundary counts as the question's.
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
        mask[row, positions[p : len(ids) - s]] = True
    return mask


def word_token_mask(tokenizer, inputs, within: torch.Tensor, pattern: re.Pattern) -> torch.Tensor:
    """(batch, T) bool: the positions in `within` whose token overlaps a match of `pattern` in the
    decoded text of the row's `within` tokens (each token's characters found by decoding the tokens up
    to it, so merges, byte pieces and word-level tokenizers all work)."""
    hit = torch.zeros_like(within)
    for row in range(within.shape[0]):
        positions = within[row].nonzero().flatten()
        ids = inputs["input_ids"][row][positions].tolist()
        ends = [len(tokenizer.decode(ids[: k + 1])) for k in range(len(ids))]
        text = tokenizer.decode(ids)
        for m in pattern.finditer(text):
            for k, end in enumerate(ends):
                start = ends[k - 1] if k else 0
                if start < m.end() and end > m.start():
                    hit[row, positions[k]] = True
    return hit


# ---------------------------------------------------------------- features


def pooled_features(
    lm,
    samples: Sequence,
    sets: Sequence[str] = DEFAULT_FEATURE_SETS,
    batch_size: int = 8,
    categories: Iterable[str] | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """{feature set: (n, L + 1, d)} mean-pooled states H^(0..L) (the sets are in the module docstring).

    One observation pass per prompt the sets need (caption, caption with the category words deleted,
    the sample's own question). `categories`: the classes whose words are masked or deleted (default:
    the samples' categories), from every caption alike, whatever its label.
    """
    from .observation import observe

    sets = as_names(sets, "sets")
    unknown = [s for s in sets if s not in FEATURE_SETS]
    if unknown or not sets:
        raise ValueError(f"unknown feature sets {unknown}; choose from {list(FEATURE_SETS)}")
    needs_words = {"caption_masked", "caption_deleted"} & set(sets)
    pattern = None
    if needs_words:
        pattern = category_pattern(categories if categories is not None else set(probe_labels(samples)))
    passes = {
        "caption": lambda: caption_samples(samples),
        "caption_deleted": lambda: deleted_caption_samples(samples, pattern),
        "question": lambda: list(samples),
    }
    feats: dict[str, np.ndarray] = {}
    for prompt, make in passes.items():
        wanted = [s for s in sets if PROMPT_OF[s] == prompt]
        if not wanted:
            continue
        probe = make()
        empty_question = [s.id or str(i) for i, s in enumerate(probe) if not s.question]
        if empty_question:
            raise ProbeDataError(
                f"{len(empty_question)} samples have no question (e.g. {empty_question[:3]}): "
                "the question-prompt features pool its tokens"
            )
        template = template_text_ids(lm, probe[0].image)
        own = lambda inputs: own_text_mask(lm, inputs, template)  # noqa: E731
        pool = {"own": own}
        if "caption_masked" in wanted:

            def masked(inputs):
                keep = own(inputs)
                return keep & ~word_token_mask(lm.processor.tokenizer, inputs, keep, pattern)

            pool["masked"] = masked
        obs = observe(
            lm,
            probe,
            readings=("pooled",),
            batch_size=batch_size,
            progress=progress,
            desc=f"pooled features ({prompt})",
            pool=pool,
        )
        reading = {
            "vision": "vision",
            "vision_question": "vision",
            "caption": "own",
            "caption_deleted": "own",
            "question": "own",
            "caption_masked": "masked",
            "text_all": "text",
        }
        for name in wanted:
            feats[name] = obs.pooled(reading[name])
    for name, f in feats.items():
        empty = ~np.isfinite(f).all(axis=(1, 2))
        if empty.any():
            raise ProbeDataError(
                f"{int(empty.sum())} samples have no tokens to pool for {name!r} "
                f"({FEATURE_SETS[name]}; e.g. sample {int(empty.argmax())}): check that every "
                "caption is non-empty and says more than its category word"
            )
    return {name: feats[name] for name in sets}


# ---------------------------------------------------------------- probes


def mean_std(a: np.ndarray) -> dict:
    """Mean and sample standard deviation over the first axis (folds)."""
    return {"mean": a.mean(0), "std": a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1:])}


@dataclass
class ProbeResult:
    """Held-out accuracies of cross-layer probes, one entry per fold (spread = across folds).

    `own_layer`, `control` and `control_train` are None when the probes ran without controls."""

    classes: list[str]
    train_layers: list[int]  # states H^(t) the probes are trained on
    eval_layers: list[int]  # states H^(e) they are evaluated on (all of them)
    accuracy: np.ndarray  # (folds, train layers, eval layers)
    train_accuracy: np.ndarray  # (folds, train layers): on the probe's own training split
    own_layer: np.ndarray | None  # (folds, eval layers): probe trained and tested on the same layer
    control: np.ndarray | None  # (folds, eval layers): shuffled-label probe, held-out accuracy
    control_train: np.ndarray | None  # (folds, eval layers): shuffled-label probe, training accuracy
    majority: float  # mean over test folds of the most frequent class's share
    n_train: int  # training samples per fold (smallest fold)
    n_test: int  # test samples per fold (smallest fold)
    scaling: str = "train_layer"

    @property
    def has_controls(self) -> bool:
        return self.own_layer is not None and self.control is not None

    def require_controls(self, what: str) -> None:
        if not self.has_controls:
            raise ValueError(
                f"{what} needs the own-layer probe and the control: run cross_layer_probes with controls=True"
            )

    @property
    def chance(self) -> float:
        return 1.0 / len(self.classes)

    @property
    def folds(self) -> int:
        return len(self.accuracy)

    @property
    def mean(self) -> np.ndarray:
        return self.accuracy.mean(0)

    @property
    def std(self) -> np.ndarray:
        return mean_std(self.accuracy)["std"]

    @property
    def control_mean(self) -> np.ndarray:
        self.require_controls("control_mean")
        return self.control.mean(0)

    @property
    def control_std(self) -> np.ndarray:
        self.require_controls("control_std")
        return mean_std(self.control)["std"]

    @property
    def selectivity(self) -> np.ndarray:
        """Own-layer accuracy minus control accuracy, per layer, mean over folds."""
        self.require_controls("selectivity")
        return (self.own_layer - self.control).mean(0)

    @property
    def transfer_from_last(self) -> np.ndarray:
        """(folds, eval layers): the probe trained on the last train layer, on every state."""
        return self.accuracy[:, int(np.argmax(self.train_layers))]

    def summary(self) -> dict:
        """JSON-ready numbers (names in the module docstring); no control keys without controls."""
        out = {
            "classes": self.classes,
            "train_layers": self.train_layers,
            "eval_layers": self.eval_layers,
            "folds": self.folds,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "scaling": self.scaling,
            "chance": self.chance,
            "majority": self.majority,
            "accuracy": mean_std(self.accuracy),
            "train_accuracy": mean_std(self.train_accuracy),
            "transfer_from_last": mean_std(self.transfer_from_last),
        }
        if self.has_controls:
            out.update(
                own_layer=mean_std(self.own_layer),
                control=mean_std(self.control),
                control_train=mean_std(self.control_train),
                selectivity=self.selectivity,
            )
        return out


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
        raise ProbeDataError(
            f"probing needs at least two categories; all {len(labels)} samples are {classes.tolist()}"
        )
    counts = np.bincount(y)
    need = MIN_PER_CLASS * folds  # every test fold holds >= 2 of each class, every training split more
    few = {str(c): int(n) for c, n in zip(classes, counts) if n < need}
    if few:
        # What would fix it: fewer folds if the rarest class allows two, else more samples at these
        # class shares (a folder gives no more than it holds, so then the rare classes must go).
        fewer = int(counts.min()) // MIN_PER_CLASS
        fixes = [f"use folds={fewer}"] if fewer >= 2 else []
        more = int(np.ceil(need * len(labels) / counts.min()))
        fixes.append(
            f"draw more samples (about {more} at these class shares, if the dataset holds that many)"
        )
        fixes.append(f"or leave out the classes with fewer than {need} samples")
        raise ProbeDataError(
            f"too few samples per class for {folds}-fold held-out probing: {few} (of {len(labels)} samples). "
            f"Each class needs at least {need} ({MIN_PER_CLASS} per test fold), or the accuracy matrix would "
            f"be meaningless: " + ", ".join(fixes) + "."
        )
    return features, classes, y


@dataclass(frozen=True)
class LogisticProbe:
    """A fitted probe with scikit-learn's LogisticRegression attribute names and memory layout."""

    coef_: np.ndarray  # (classes, d); (1, d) for two classes
    intercept_: np.ndarray  # (classes,); (1,) for two classes
    classes_: np.ndarray


def fit_logistic(
    Z: np.ndarray, y: np.ndarray, C: float = 1.0, max_iter: int = 300, tol: float = 1e-4
) -> LogisticProbe:
    """`LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(Z, y)` (L-BFGS, L2 penalty, intercept) bit
    for bit, without its per-call validation and array-API dispatch, which cost most of the time of
    chapter 5's many small fits (benchmarks/probing_fits.py measures the saving).

    The objective is scikit-learn's (1.9.1, `_logistic_regression_path` and `LinearModelLoss`) as it
    hands it to L-BFGS-B: the mean over samples of the multinomial cross-entropy (binomial, one
    coefficient row, for two classes) + 0.5 ||W||^2 / (C n), the intercept unpenalised; that is
    C * summed loss + 0.5 ||W||^2, divided by C n. The per-sample loss and gradient come from
    scikit-learn's own compiled kernels and every other step is the same numpy operation in the same
    order, with the same `scipy.optimize.minimize` call, so the iterates are identical, not merely
    close (`tests/test_probing.py` compares the coefficients exactly). Unlike LogisticRegression it
    fits float32 features in float64, and does not warn when `max_iter` stops L-BFGS (see
    `cross_layer_probes`).
    """
    from scipy import optimize

    try:
        from sklearn._loss.loss import HalfBinomialLoss, HalfMultinomialLoss  # private: pinned scikit-learn
    except ImportError:  # a scikit-learn that moved them: its public class, the same fit, slower
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # as here: max_iter may stop the fit
            fitted = LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(
                np.asarray(Z, dtype=np.float64), y
            )
        return LogisticProbe(coef_=fitted.coef_, intercept_=fitted.intercept_, classes_=fitted.classes_)

    Z = np.ascontiguousarray(Z, dtype=np.float64)
    (n, d), classes = Z.shape, np.unique(y)
    binary = len(classes) == 2
    if binary:  # one row: the log-odds of classes[1]
        kernel, target = HalfBinomialLoss(), (y == classes[1]).astype(np.float64)
    else:
        kernel, target = (
            HalfMultinomialLoss(n_classes=len(classes)),
            np.searchsorted(classes, y).astype(np.float64),
        )
    l2 = 1.0 / (C * n)

    def loss_gradient(coef):  # coef: (d + 1,), or (classes, d + 1) raveled in Fortran order
        if binary:
            weights, intercept = coef[:-1], coef[-1]
            raw = Z @ weights + intercept
        else:
            W = coef.reshape((len(classes), -1), order="F")
            weights, intercept = W[:, :-1], W[:, -1]
            raw = Z @ weights.T + intercept
        loss_out, grad_out = kernel.loss_gradient(target, raw)
        flat = np.ravel(weights, order="K")  # as squared_norm copies a 2-d weights
        loss = float(np.sum(loss_out) / n) + float(
            0.5 * l2 * (weights @ weights if binary else np.dot(flat, flat))
        )
        grad_out /= n
        if binary:
            grad = np.empty_like(coef)
            grad[:-1] = Z.T @ grad_out + l2 * weights
            grad[-1] = np.sum(grad_out)
            return loss, grad
        grad = np.empty(W.shape, order="F")
        grad[:, :-1] = grad_out.T @ Z + l2 * weights
        grad[:, -1] = np.sum(grad_out, axis=0)
        return loss, grad.ravel(order="F")

    w0 = np.zeros((d + 1) * (1 if binary else len(classes)))
    opt = optimize.minimize(
        loss_gradient,
        w0,
        method="L-BFGS-B",
        jac=True,
        options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps},
    )
    if binary:
        return LogisticProbe(coef_=opt.x[:-1][None, :], intercept_=opt.x[-1:], classes_=classes)
    W = np.reshape(opt.x, (len(classes), -1), order="F").copy(order="K")
    return LogisticProbe(coef_=W[:, :-1], intercept_=W[:, -1], classes_=classes)


def _standardise(X: np.ndarray, scaler) -> np.ndarray:
    """`scaler.transform(X)` (a StandardScaler) for any leading axes, without its per-call validation."""
    return (X - scaler.mean_) / scaler.scale_


def probe_accuracy(probe, Z: np.ndarray, y: np.ndarray) -> float:
    """`probe.score(Z, y)` without scikit-learn's per-call validation: the arithmetic of its `predict`
    (decision values Z @ coef.T + intercept; a two-class probe has one row: class 1 where it is > 0)."""
    scores = Z @ probe.coef_.T + probe.intercept_
    picked = (scores[:, 0] > 0).astype(int) if scores.shape[1] == 1 else scores.argmax(1)
    return float(np.mean(probe.classes_[picked] == y))


def cross_layer_probes(
    features,
    labels: Sequence,
    train_layers: Sequence[int] | None = None,
    folds: int = 5,
    seed: int = 0,
    scaling: str = "train_layer",
    C: float = 1.0,
    max_iter: int = 300,
    controls: bool = True,
    threads: int | None = 1,
) -> ProbeResult:
    """Train a probe on each state in `train_layers` (default: the last four), evaluate it on every state.

    `features`: (n, S, d), e.g. `pooled_features(...)["question"]`; `labels`: n category names.
    `scaling`: "train_layer" standardises with the training layer's statistics everywhere (the probe is
    one fixed function); "per_layer" standardises each evaluated layer with its own training-split
    statistics (no labels used), which removes the growth of the residual stream's scale. Training
    does not depend on it: `probes_by_scaling` evaluates one set of probes both ways.
    With `controls`, also the own-layer probe and the shuffled-label control on every layer (neither
    depends on `scaling`: each is trained and tested on one layer with that layer's statistics).
    `max_iter`: 300 gave the same accuracies (to two decimals) as 2000 on the organisms' features, 5x
    faster; separable or shuffled labels otherwise keep L-BFGS iterating for little change.
    `threads`: BLAS threads for the fits (None: the library's default). These problems are small: on a
    shared machine the default threading costs far more CPU than one thread does.
    """
    return probes_by_scaling(
        features,
        labels,
        train_layers=train_layers,
        folds=folds,
        seed=seed,
        scalings=(scaling,),
        C=C,
        max_iter=max_iter,
        controls=controls,
        threads=threads,
    )[scaling]


def probes_by_scaling(
    features,
    labels: Sequence,
    train_layers: Sequence[int] | None = None,
    folds: int = 5,
    seed: int = 0,
    scalings: Sequence[str] = SCALINGS,
    C: float = 1.0,
    max_iter: int = 300,
    controls: bool = True,
    threads: int | None = 1,
) -> dict[str, ProbeResult]:
    """{scaling: ProbeResult}: the probes of `cross_layer_probes`, fitted once, evaluated with each scaling.

    A probe is always trained on its train layer standardised by that layer's own statistics; the
    scaling only changes how the other states are standardised for evaluation. The controls do not
    depend on it and come with the first scaling only, so result `s` is exactly
    `cross_layer_probes(..., scaling=s, controls=controls and s == scalings[0])`.
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    scalings = list(scalings)
    if not scalings or len(set(scalings)) < len(scalings) or not set(scalings) <= set(SCALINGS):
        raise ValueError(f"scaling must be one of {SCALINGS} (each at most once), not {scalings!r}")
    X, classes, y = _check(features, labels, folds)
    n, S, _ = X.shape
    train_layers = last_layers(S) if train_layers is None else [int(t) for t in train_layers]
    bad = [t for t in train_layers if not 0 <= t < S]
    if bad or not train_layers:
        raise ValueError(
            f"train layers {bad or train_layers} out of range: the features have states 0..{S - 1}"
        )
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n), y))
    y_control = np.random.default_rng(seed).permutation(y)  # Hewitt-Liang control: random labels
    # (S, n, d): a state's rows are contiguous, the memory layout scikit-learn's transform gives the fits
    by_state = np.ascontiguousarray(X.transpose(1, 0, 2))

    acc = {s: np.zeros((folds, len(train_layers), S)) for s in scalings}
    train_acc = np.zeros((folds, len(train_layers)))
    own, ctrl, ctrl_train = (np.zeros((folds, S)) for _ in range(3))
    majority = []
    with threadpool_limits(limits=threads):
        for f, (tr, te) in enumerate(splits):
            majority.append(np.bincount(y[te]).max() / len(te))
            scalers = [StandardScaler().fit(by_state[e, tr]) for e in range(S)]
            Z_tr = [_standardise(by_state[e, tr], scalers[e]) for e in range(S)]
            Z_te = [
                _standardise(by_state[e, te], scalers[e]) for e in range(S)
            ]  # each state by its own statistics
            fitted = {}
            for i, t in enumerate(train_layers):
                probe = fitted[t] = fit_logistic(Z_tr[t], y[tr], C, max_iter)
                train_acc[f, i] = probe_accuracy(probe, Z_tr[t], y[tr])
                for s in scalings:
                    Z_eval = Z_te if s == "per_layer" else _standardise(by_state[:, te], scalers[t])
                    acc[s][f, i] = [probe_accuracy(probe, Z_eval[e], y[te]) for e in range(S)]
            if controls:
                for e in range(S):
                    # on a train layer the own-layer probe is that layer's probe: the same data, the same fit
                    own_probe = fitted[e] if e in fitted else fit_logistic(Z_tr[e], y[tr], C, max_iter)
                    own[f, e] = probe_accuracy(own_probe, Z_te[e], y[te])
                    control = fit_logistic(Z_tr[e], y_control[tr], C, max_iter)
                    ctrl[f, e] = probe_accuracy(control, Z_te[e], y_control[te])
                    ctrl_train[f, e] = probe_accuracy(control, Z_tr[e], y_control[tr])
    shared = dict(
        classes=classes.tolist(),
        train_layers=train_layers,
        eval_layers=list(range(S)),
        majority=float(np.mean(majority)),
        n_train=min(len(tr) for tr, _ in splits),
        n_test=min(len(te) for _, te in splits),
    )
    none = dict(own_layer=None, control=None, control_train=None)
    first = dict(own_layer=own, control=ctrl, control_train=ctrl_train) if controls else none
    return {
        s: ProbeResult(
            accuracy=acc[s],
            train_accuracy=train_acc.copy(),
            scaling=s,
            **shared,
            **(first if s == scalings[0] else none),
        )
        for s in scalings
    }


def missing_numbers(value, path: str = "") -> list[str]:
    """Paths in a JSON-ready structure that hold None, NaN or infinity (what a results file must not)."""
    if value is None:
        return [path or "<root>"]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in missing_numbers(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in missing_numbers(v, f"{path}[{i}]")]
    if isinstance(value, np.ndarray):
        return missing_numbers(value.tolist(), path)
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return [path]
    return []


__all__ = [
    "pooled_features",
    "load_probe_samples",
    "caption_samples",
    "deleted_caption_samples",
    "probe_labels",
    "own_text_mask",
    "word_token_mask",
    "template_text_ids",
    "category_forms",
    "category_pattern",
    "delete_category_words",
    "names_category",
    "cross_layer_probes",
    "probes_by_scaling",
    "fit_logistic",
    "ProbeResult",
    "ProbeDataError",
    "last_layers",
    "mean_std",
    "missing_numbers",
    "FEATURE_SETS",
    "DEFAULT_FEATURE_SETS",
    "SCALINGS",
]
