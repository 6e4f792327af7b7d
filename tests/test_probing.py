import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from vlmlib import Sample, cross_layer_probes, pooled_features, probes_by_scaling, shapes_samples
from vlmlib.paper.probing import paper_style_summary, probe_figure, probing_results
from vlmlib.probing import (
    DEFAULT_FEATURE_SETS,
    ProbeDataError,
    caption_samples,
    category_forms,
    category_pattern,
    delete_category_words,
    fit_logistic,
    last_layers,
    load_probe_samples,
    missing_numbers,
    names_category,
    own_text_mask,
    probe_accuracy,
    probe_labels,
    template_text_ids,
    word_token_mask,
)
from vlmlib.util import write_json as write_results

# ---------------------------------------------------------------- category words


def test_category_forms_cover_plurals_and_irregulars():
    assert set(category_forms("circle")) == {"circle", "circles", "circlees"}
    assert {"cross", "crosses"} <= set(category_forms("Cross"))
    assert {"person", "people", "persons"} <= set(category_forms("person"))
    with pytest.raises(ProbeDataError, match="empty category"):
        category_forms(" ")


def test_category_pattern_matches_whole_words_of_every_class():
    pattern = category_pattern(["cat", "dog"])
    text = "Two Cats and a dog scatter near the dogs' catalogue"
    assert [m.group(0) for m in pattern.finditer(text)] == ["Cats", "dog", "dogs"]
    assert delete_category_words(text, pattern) == "Two and a scatter near the ' catalogue"
    assert (
        delete_category_words("2 red circles , 1 blue circle", category_pattern(["circle"]))
        == "2 red , 1 blue"
    )


def test_names_category():
    sample = Sample(image=None, caption="three people on a bench", category="person")
    assert names_category(sample) and not names_category(dataclasses.replace(sample, caption="a bench"))
    # a caption that names another class only does not name its own
    assert not names_category(
        dataclasses.replace(sample, caption="a dog"), category_pattern(["person", "dog"])
    )


def test_word_token_mask_on_a_subword_tokenizer():
    """Word pieces: every piece of a category word is masked, no piece of any other word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["[UNK]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(
        ["a red circle and two circular rings", "blue squares", "green crosses"] * 3, trainer
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    text = "two circles near a circular square"
    ids = tokenizer.encode(text)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) > len(text.split())  # really sub-word pieces
    inputs = {"input_ids": torch.tensor([ids])}
    within = torch.ones(1, len(ids), dtype=torch.bool)
    hit = word_token_mask(tokenizer, inputs, within, category_pattern(["circle", "square"]))[0]
    masked = "".join(p for p, h in zip(pieces, hit) if h).replace("Ġ", " ").split()
    kept = "".join(p for p, h in zip(pieces, hit) if not h).replace("Ġ", " ").split()
    assert masked == ["circles", "square"] and kept == ["two", "near", "a", "circular"]
    within[0, :2] = False  # positions outside `within` are never masked
    assert not word_token_mask(tokenizer, inputs, within, category_pattern(["two"]))[0].any()


# ---------------------------------------------------------------- features


@pytest.fixture(scope="module")
def probe_samples():
    return shapes_samples(3, seed=7, single_category=True)


def text_positions(lm, inputs, row, text):
    """Where a text's tokens sit in one row: the text tokenized alone, found in the ids."""
    want = lm.processor.tokenizer.encode(text, add_special_tokens=False)
    ids = inputs["input_ids"][row].tolist()
    starts = [i for i in range(len(ids) - len(want) + 1) if ids[i : i + len(want)] == want]
    assert len(starts) == 1, (text, ids)
    return list(range(starts[0], starts[0] + len(want)))


@torch.no_grad()
def direct_pooled(lm, samples, prompt, positions):
    """Pooled states from transformers' output_hidden_states, one sample at a time, no vlmlib hooks
    (the last layer's raw output from a plain hook: hidden_states[-1] is after the final norm).
    `prompt(sample)` is the text after the image; `positions` maps a name to fn(inputs, sample) giving
    the text positions pooled; "vision" pools the image tokens."""
    last_layer = lm.model.get_submodule(lm.family.decoder_layers)[-1]
    out = {"vision": [], **{name: [] for name in positions}}
    for sample in samples:
        sample = dataclasses.replace(sample, question=prompt(sample))
        inputs = lm.encode_samples([sample])
        captured = []
        handle = last_layer.register_forward_hook(
            lambda m, a, o: captured.append(o[0] if isinstance(o, tuple) else o)
        )
        try:
            hidden = list(lm.forward(inputs, output_hidden_states=True).hidden_states)
        finally:
            handle.remove()
        hidden[-1] = captured[0]
        where = {
            "vision": (inputs["input_ids"][0] == lm.image_token_id).nonzero().flatten(),
            **{name: fn(inputs, sample) for name, fn in positions.items()},
        }
        for name, pos in where.items():
            out[name].append(np.stack([h[0, pos].mean(0).numpy() for h in hidden]))
    return {m: np.stack(v) for m, v in out.items()}


def test_own_text_mask_selects_exactly_the_caption_or_question(lm, probe_samples):
    for probe, text in (
        (caption_samples(probe_samples), lambda s: s.caption),
        (probe_samples, lambda s: s.question),
    ):
        inputs = lm.encode_samples(probe)  # a padded batch: captions of different lengths
        mask = own_text_mask(lm, inputs, template_text_ids(lm, probe[0].image))
        for row, sample in enumerate(probe):
            assert mask[row].nonzero().flatten().tolist() == text_positions(lm, inputs, row, text(sample))


def test_pooled_features_equal_a_direct_computation(lm, probe_samples):
    feats = pooled_features(lm, probe_samples, batch_size=2, progress=False)  # padded batches of 2 and 1
    assert list(feats) == list(DEFAULT_FEATURE_SETS)
    width = lm.model.config.text_config.hidden_size
    assert all(f.shape == (len(probe_samples), lm.num_layers + 1, width) for f in feats.values())
    pattern = category_pattern({s.category for s in probe_samples})
    tokenizer = lm.processor.tokenizer

    def caption(inputs, s):
        return text_positions(lm, inputs, 0, s.caption)

    def caption_without_category(inputs, s):  # the caption's positions whose token is not a category word
        keep = [
            p
            for p in caption(inputs, s)
            if not pattern.fullmatch(tokenizer.decode([int(inputs["input_ids"][0, p])]).strip())
        ]
        assert 0 < len(keep) < len(caption(inputs, s))
        return keep

    def deleted(s):
        return " ".join(w for w in s.caption.split() if not pattern.fullmatch(w))

    def close(a, b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    def own_text(inputs, s):
        return text_positions(lm, inputs, 0, s.question)

    by_caption = direct_pooled(
        lm, probe_samples, lambda s: s.caption, {"caption": caption, "masked": caption_without_category}
    )
    close(feats["vision"], by_caption["vision"])
    close(feats["caption"], by_caption["caption"])
    close(feats["caption_masked"], by_caption["masked"])
    gone = direct_pooled(lm, probe_samples, deleted, {"text": own_text})
    close(feats["caption_deleted"], gone["text"])
    by_question = direct_pooled(lm, probe_samples, lambda s: s.question, {"text": own_text})
    close(feats["vision_question"], by_question["vision"])
    close(feats["question"], by_question["text"])


def test_category_words_are_masked_whatever_the_label(lm):
    """Every class's words leave the pool, not only the sample's own: which tokens are dropped must not
    depend on the label."""
    image = shapes_samples(1, seed=0)[0].image
    one = Sample(image=image, caption="1 red circle and 2 blue squares", category="circle")
    other = dataclasses.replace(one, category="square")
    feats = [
        pooled_features(
            lm,
            [s],
            sets=("caption_masked", "caption_deleted"),
            categories=["circle", "square"],
            progress=False,
        )
        for s in (one, other)
    ]
    for name in ("caption_masked", "caption_deleted"):
        np.testing.assert_array_equal(feats[0][name], feats[1][name])
    only_own = pooled_features(lm, [one], sets=("caption_masked",), progress=False)["caption_masked"]
    assert not np.allclose(only_own, feats[0]["caption_masked"])  # with the default, only "circle" is masked


def test_all_text_tokens_option_differs_from_caption_only(lm, probe_samples):
    feats = pooled_features(lm, probe_samples[:2], sets=("caption", "text_all"), progress=False)
    assert feats["caption"].shape == feats["text_all"].shape and not np.allclose(
        feats["caption"], feats["text_all"]
    )


def test_bad_feature_requests_are_named(lm, probe_samples):
    with pytest.raises(ValueError, match="unknown feature sets.*'text'"):
        pooled_features(lm, probe_samples, sets=("vision", "text"), progress=False)
    bare = [dataclasses.replace(probe_samples[0], caption="circles", category="circle")]
    with pytest.raises(ProbeDataError, match="nothing but category words"):
        pooled_features(lm, bare, sets=("caption_deleted",), progress=False)
    with pytest.raises(ProbeDataError, match="no tokens to pool for 'caption_masked'"):
        pooled_features(lm, bare, sets=("caption_masked",), progress=False)


def test_missing_categories_or_captions_are_named():
    samples = shapes_samples(2, seed=0)  # mixed-category images: no category
    with pytest.raises(ProbeDataError, match="single_category=True"):
        probe_labels(samples)
    samples[0].caption = None
    with pytest.raises(ProbeDataError, match="caption"):
        caption_samples(samples)


# ---------------------------------------------------------------- probes on synthetic features


def synthetic(n_per_class=30, classes=6, layers=5, dim=16, signal_layers=(3, 4), seed=0):
    """Features whose class is linearly separable on `signal_layers` and pure noise elsewhere."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    X = rng.normal(size=(len(y), layers, dim))
    centres = rng.normal(size=(classes, dim)) * 4
    for layer in signal_layers:
        X[:, layer] += centres[y] * (1 + layer)  # a different scale per layer
    return X, [f"c{k}" for k in y]


def test_probes_reach_high_accuracy_where_classes_are_separable():
    X, labels = synthetic()
    res = cross_layer_probes(X, labels, train_layers=[3, 4], folds=4)
    assert res.accuracy.shape == (4, 2, 5) and res.train_layers == [3, 4]
    assert res.mean[:, 3:].min() > 0.9  # trained on a signal layer, evaluated on a signal layer
    assert np.abs(res.mean[:, :3] - res.chance).max() < 0.15  # noise layers: chance
    assert (
        res.own_layer.mean(0)[3:].min() > 0.9 and np.abs(res.own_layer.mean(0)[:3] - res.chance).max() < 0.15
    )
    # uneven folds
    assert res.chance == pytest.approx(1 / 6) and res.majority == pytest.approx(1 / 6, abs=0.02)
    assert (res.selectivity[3:] > 0.6).all()
    s = paper_style_summary(res)
    assert s["trained_layers"] == [3, 4] and s["trained_layers_mean"] > 0.9


def test_shuffled_labels_stay_near_chance():
    X, labels = synthetic()
    res = cross_layer_probes(X, labels, train_layers=[4], folds=4)
    assert np.abs(res.control_mean - res.chance).max() < 0.12  # the control task, every layer
    shuffled = list(np.random.default_rng(1).permutation(labels))
    res = cross_layer_probes(X, shuffled, train_layers=[4], folds=4, controls=False)
    assert abs(res.mean.mean() - res.chance) < 0.1


def test_per_layer_scaling_transfers_across_a_change_of_scale():
    X, labels = synthetic(signal_layers=(1, 4))
    offset = np.random.default_rng(2).normal(size=X.shape[-1]) * 100
    X[:, 1] = X[:, 4] * 0.1 + offset  # the same code, another scale and offset per dimension
    fixed = cross_layer_probes(X, labels, train_layers=[4], folds=3, controls=False)
    per_layer = cross_layer_probes(X, labels, train_layers=[4], folds=3, controls=False, scaling="per_layer")
    assert per_layer.mean[0, 1] > 0.9 > fixed.mean[0, 1]


def test_default_train_layers_are_the_last_four():
    assert last_layers(9) == [5, 6, 7, 8]
    X, labels = synthetic(layers=6, signal_layers=(5,))
    assert cross_layer_probes(X, labels, folds=2, controls=False).train_layers == [2, 3, 4, 5]


def test_too_few_samples_per_class_is_a_clear_error():
    X, labels = synthetic(n_per_class=30)
    X, labels = X[:-27], labels[:-27]  # the last class keeps 3 samples
    with pytest.raises(ProbeDataError, match=r"too few samples per class.*c5.*draw more samples") as error:
        cross_layer_probes(X, labels, folds=2)
    assert "use folds" not in str(error.value)  # 3 samples cannot fill two test folds of 2
    assert "leave out the classes with fewer than 4" in str(error.value)  # a folder may hold no more
    X5, labels5 = synthetic(n_per_class=30)
    with pytest.raises(ProbeDataError, match=r"use folds=2, draw more samples"):
        cross_layer_probes(X5[:-25], labels5[:-25], folds=3)  # the last class keeps 5: 2 folds fit
    with pytest.raises(ProbeDataError, match="at least two categories"):
        cross_layer_probes(X[:5], labels[:5], folds=2)
    with pytest.raises(ProbeDataError, match="labels"):
        cross_layer_probes(X, labels[:-1])
    with pytest.raises(ValueError, match="out of range"):
        cross_layer_probes(*synthetic(), train_layers=[9])


def test_too_few_shapes_samples_are_refused_not_topped_up():
    samples = load_probe_samples("shapes", 6, seed=0)
    assert [s.id for s in samples] == [s.id for s in shapes_samples(6, seed=0, single_category=True)]
    with pytest.raises(ProbeDataError, match="more samples|n_samples|at least"):
        cross_layer_probes(np.zeros((6, 3, 4)), probe_labels(samples), folds=2)


def test_transfer_numbers_show_a_late_probe_failing_early():
    """Signal only on the last two states, at another scale on each: the last-state probe scores high
    there and near chance on the early states, and so does the own-layer probe (nothing to read)."""
    X, labels = synthetic(layers=6, signal_layers=(4, 5))
    res = cross_layer_probes(X, labels, train_layers=[4, 5], folds=4)
    s = paper_style_summary(res)
    assert s["last_state"] == 5 and s["early_states"] == [0, 1, 2, 3] == s["plateau_layers"]
    assert s["transfer_on_last_mean"] > 0.9 and abs(s["transfer_on_early_mean"] - res.chance) < 0.12
    assert s["transfer_drop_mean"] > 0.7 and s["transfer_drop_std"] >= 0
    assert abs(s["own_on_early_mean"] - res.chance) < 0.12
    np.testing.assert_allclose(res.summary()["transfer_from_last"]["mean"], res.mean[1])
    assert s["folds"] == 4 and s["control_mean"] < 0.3


def test_without_controls_no_control_numbers_are_made_up():
    X, labels = synthetic()
    res = cross_layer_probes(X, labels, train_layers=[4], folds=3, controls=False)
    assert not res.has_controls and {"own_layer", "control", "selectivity"}.isdisjoint(res.summary())
    assert "own_layer_mean" not in paper_style_summary(res) and not missing_numbers(res.summary())
    with pytest.raises(ValueError, match="controls=True"):
        res.selectivity
    with pytest.raises(ValueError, match="controls=True"):
        probing_results({"vision": res})


def test_results_file_holds_no_missing_number(tmp_path):
    """What chapter 5 writes (probes with controls, the other scaling without): every promised number is
    a number, also when the probes are trained on every state (no early states to summarise)."""
    X, labels = synthetic(layers=4, signal_layers=(2, 3))
    for train_layers in ([2, 3], [0, 1, 2, 3]):
        by_scaling = {
            m: probes_by_scaling(X, labels, train_layers=train_layers, folds=3)
            for m in ("vision", "question")
        }
        probes = {m: r["train_layer"] for m, r in by_scaling.items()}
        rescaled = {m: r["per_layer"] for m, r in by_scaling.items()}
        payload = probing_results(probes, rescaled)
        path = write_results(tmp_path / "05.json", payload)
        text = path.read_text()
        assert "null" not in text and "NaN" not in text
        written = json.loads(text)
        assert (
            set(written["probes"])
            == set(written["summary"])
            == set(written["probes_other_scaling"])
            == set(probes)
        )
        summary = written["summary"]["question"]
        for key in (
            "transfer_on_last_mean",
            "transfer_on_last_std",
            "own_layer_mean",
            "control_mean",
            "chance",
        ):
            assert isinstance(summary[key], float)
        assert len(written["probes"]["vision"]["own_layer"]["mean"]) == 4
        assert ("transfer_drop_mean" in summary) == (train_layers == [2, 3])


def sklearn_probes(X, labels, train_layers, folds, seed, scaling):
    """The probes computed the plain way: scikit-learn's scaler, fit and `score` for every pair of states."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    classes, y = np.unique(labels, return_inverse=True)
    y_control = np.random.default_rng(seed).permutation(y)
    S = X.shape[1]
    out = {k: [] for k in ("accuracy", "train_accuracy", "own_layer", "control", "control_train")}
    for tr, te in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        scalers = [StandardScaler().fit(X[tr, e]) for e in range(S)]
        probes = [
            LogisticRegression(max_iter=300).fit(scalers[t].transform(X[tr, t]), y[tr]) for t in train_layers
        ]
        out["train_accuracy"].append(
            [p.score(scalers[t].transform(X[tr, t]), y[tr]) for p, t in zip(probes, train_layers)]
        )
        out["accuracy"].append(
            [
                [
                    p.score(scalers[t if scaling == "train_layer" else e].transform(X[te, e]), y[te])
                    for e in range(S)
                ]
                for p, t in zip(probes, train_layers)
            ]
        )
        own, control, control_train = [], [], []
        for e in range(S):
            Z_tr, Z_te = scalers[e].transform(X[tr, e]), scalers[e].transform(X[te, e])
            own.append(LogisticRegression(max_iter=300).fit(Z_tr, y[tr]).score(Z_te, y[te]))
            shuffled = LogisticRegression(max_iter=300).fit(Z_tr, y_control[tr])
            control.append(shuffled.score(Z_te, y_control[te]))
            control_train.append(shuffled.score(Z_tr, y_control[tr]))
        (
            out["own_layer"].append(own),
            out["control"].append(control),
            out["control_train"].append(control_train),
        )
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("classes", [2, 3])
def test_shared_fits_give_exactly_the_plain_probes_of_each_scaling(classes):
    """One set of fits scored both ways (fast scoring, an own-layer probe reused from its train layer)
    equals scikit-learn's own fits and `score`, and a separate `cross_layer_probes` call per scaling."""
    X, labels = synthetic(n_per_class=12, classes=classes, layers=4, dim=6, signal_layers=(3,))
    # rescaled and noisier: the scalings and the two probes differ on it
    X[:, 2] = X[:, 3] * 0.5 + 3 + 20 * X[:, 0]
    both = probes_by_scaling(X, labels, train_layers=[2, 3], folds=3, seed=1)
    for s, res in both.items():
        plain = sklearn_probes(X, labels, [2, 3], folds=3, seed=1, scaling=s)
        np.testing.assert_array_equal(res.accuracy, plain["accuracy"])
        np.testing.assert_array_equal(res.train_accuracy, plain["train_accuracy"])
        alone = cross_layer_probes(
            X, labels, train_layers=[2, 3], folds=3, seed=1, scaling=s, controls=s == "train_layer"
        )
        assert res.scaling == alone.scaling == s and res.has_controls == alone.has_controls == (
            s == "train_layer"
        )
        np.testing.assert_array_equal(res.accuracy, alone.accuracy)
    assert not np.array_equal(both["train_layer"].accuracy, both["per_layer"].accuracy)
    for field in ("own_layer", "control", "control_train"):
        np.testing.assert_array_equal(getattr(both["train_layer"], field), plain[field])
    assert both["per_layer"].own_layer is None
    per_layer_first = probes_by_scaling(
        X, labels, train_layers=[2, 3], folds=3, seed=1, scalings=["per_layer"]
    )
    np.testing.assert_array_equal(per_layer_first["per_layer"].control, both["train_layer"].control)
    with pytest.raises(ValueError, match="each at most once"):
        probes_by_scaling(X, labels, scalings=["per_layer", "per_layer"])


@pytest.mark.parametrize("classes", [2, 3, 6])
def test_probe_accuracy_is_sklearns_score(classes):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(classes)
    y = np.repeat(np.arange(classes), 15)
    X = rng.normal(size=(len(y), 5)) + rng.normal(size=(classes, 5))[y]  # overlapping classes: some errors
    probe = LogisticRegression(max_iter=300).fit(X[::2], y[::2])
    splits = ((X[1::2], y[1::2]), (X[::2], y[::2]), (X + rng.normal(size=X.shape), y))
    scores = {probe_accuracy(probe, Z, t) for Z, t in splits}
    assert scores == {probe.score(Z, t) for Z, t in splits}
    assert len(scores) == 3 and 0 < min(scores) < 1


@pytest.mark.parametrize(
    "classes, C, max_iter", [(2, 1.0, 300), (3, 0.1, 300), (6, 1.0, 300), (6, 1.0, 4), (2, 10.0, 4)]
)
def test_fit_logistic_is_sklearns_logistic_regression_bit_for_bit(classes, C, max_iter):
    """Converged or stopped at max_iter, two classes (one coefficient row) or more: the same numbers."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(classes)
    y = np.array([f"c{k}" for k in rng.integers(0, classes, 90)])
    Z = rng.normal(size=(90, 7)) + rng.normal(size=(classes, 7))[np.unique(y, return_inverse=True)[1]]
    ours = fit_logistic(Z, y, C=C, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = LogisticRegression(C=C, max_iter=max_iter).fit(Z, y)
    for name in ("coef_", "intercept_", "classes_"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
    assert ours.coef_.shape == (1 if classes == 2 else classes, 7)
    assert probe_accuracy(ours, Z, y) == theirs.score(Z, y)


def test_fit_logistic_falls_back_to_logistic_regression_without_the_private_kernels(monkeypatch):
    """A scikit-learn whose private loss module moved: the public class fits, the same numbers."""
    import sys

    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.array([f"c{k}" for k in rng.integers(0, 3, 60)])
    Z = rng.normal(size=(60, 5)) + rng.normal(size=(3, 5))[np.unique(y, return_inverse=True)[1]]
    monkeypatch.setitem(sys.modules, "sklearn._loss.loss", None)  # import now raises ImportError
    ours = fit_logistic(Z, y, C=0.5, max_iter=50)
    theirs = LogisticRegression(C=0.5, max_iter=50).fit(Z, y)
    for name in ("coef_", "intercept_", "classes_"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))


def test_missing_numbers_finds_nulls_and_nans():
    assert missing_numbers({"a": [1.0, float("nan")], "b": {"c": None}, "d": np.array([np.inf])}) == [
        "a[1]",
        "b.c",
        "d[0]",
    ]
    assert missing_numbers({"a": [1, 2.5, "x"], "b": True}) == []


def test_probe_figure_has_one_panel_per_feature_set_at_column_width():
    import matplotlib

    matplotlib.use("Agg")
    from vlmlib.paper.figures import COLUMN_WIDTH

    X, labels = synthetic(layers=4, signal_layers=(3,))
    probes = {name: cross_layer_probes(X, labels, train_layers=[2, 3], folds=2) for name in ("a", "b", "c")}
    fig = probe_figure(probes, paper={"plateau_accuracy": [0.55, 0.63], "spike_accuracy": 0.9})
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["a", "b", "c"] and fig.get_size_inches()[0] == COLUMN_WIDTH
    # paper x2, late probes, last-state probe, own layer, control, chance
    assert len(fig.legends[0].get_texts()) == 7
