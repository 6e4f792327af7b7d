import numpy as np
import pytest
import torch

from vlmlib.data import shapes_samples
from vlmlib.probing import (ProbeDataError, caption_mask, caption_samples, cross_layer_probes, last_layers,
                            load_probe_samples, paper_style_summary, pooled_features, probe_labels,
                            template_text_ids)

# ---------------------------------------------------------------- features


@pytest.fixture(scope="module")
def probe_samples():
    return shapes_samples(5, seed=7, single_category=True)


def caption_positions(lm, inputs, row, caption):
    """Where the caption's tokens sit in one row: the caption tokenized alone, found in the ids."""
    want = lm.processor.tokenizer.encode(caption, add_special_tokens=False)
    ids = inputs["input_ids"][row].tolist()
    starts = [i for i in range(len(ids) - len(want) + 1) if ids[i:i + len(want)] == want]
    assert len(starts) == 1, (caption, ids)
    return list(range(starts[0], starts[0] + len(want)))


@torch.no_grad()
def direct_pooled(lm, samples):
    """Pooled states from transformers' output_hidden_states, one sample at a time, no vlmlib hooks
    (the last layer's raw output from a plain hook: hidden_states[-1] is after the final norm)."""
    last_layer = lm.model.get_submodule(lm.family.decoder_layers)[-1]
    out = {"vision": [], "text": []}
    for sample in caption_samples(samples):
        inputs = lm.encode_samples([sample])
        captured = []
        handle = last_layer.register_forward_hook(lambda m, a, o: captured.append(o[0] if isinstance(o, tuple) else o))
        try:
            hidden = list(lm.forward(inputs, output_hidden_states=True).hidden_states)
        finally:
            handle.remove()
        hidden[-1] = captured[0]
        vision = (inputs["input_ids"][0] == lm.image_token_id).nonzero().flatten()
        text = caption_positions(lm, inputs, 0, sample.caption)
        out["vision"].append(np.stack([h[0, vision].mean(0).numpy() for h in hidden]))
        out["text"].append(np.stack([h[0, text].mean(0).numpy() for h in hidden]))
    return {m: np.stack(v) for m, v in out.items()}


def test_caption_mask_selects_exactly_the_caption(lm, probe_samples):
    probe = caption_samples(probe_samples)
    inputs = lm.encode_samples(probe)  # a padded batch: captions of different lengths
    mask = caption_mask(lm, inputs, template_text_ids(lm, probe[0].image))
    for row, sample in enumerate(probe):
        assert mask[row].nonzero().flatten().tolist() == caption_positions(lm, inputs, row, sample.caption)


def test_pooled_features_equal_a_direct_computation(lm, probe_samples):
    feats = pooled_features(lm, probe_samples, batch_size=3, progress=False)  # padded batches of 3 and 2
    reference = direct_pooled(lm, probe_samples)
    for modality in ("vision", "text"):
        assert feats[modality].shape == (len(probe_samples), lm.num_layers + 1, lm.model.config.text_config.hidden_size)
        np.testing.assert_allclose(feats[modality], reference[modality], rtol=1e-4, atol=1e-5)


def test_all_text_tokens_option_differs_from_caption_only(lm, probe_samples):
    caption = pooled_features(lm, probe_samples[:2], progress=False)["text"]
    everything = pooled_features(lm, probe_samples[:2], text="all", progress=False)["text"]
    assert caption.shape == everything.shape and not np.allclose(caption, everything)


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
    assert res.own_layer.mean(0)[3:].min() > 0.9 and np.abs(res.own_layer.mean(0)[:3] - res.chance).max() < 0.15
    assert res.chance == pytest.approx(1 / 6) and res.majority == pytest.approx(1 / 6, abs=0.02)  # uneven folds
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
    with pytest.raises(ProbeDataError, match=r"too few samples per class.*c5.*raise n_samples"):
        cross_layer_probes(X, labels, folds=2)
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
