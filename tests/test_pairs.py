"""Counterfactual pairs: the partner differs from its sample in one object, and in nothing else."""

import numpy as np
import pytest

from vlmlib.data import DatasetError, load_samples, make_shapes_sample
from vlmlib.data.pairs import counterfactual_pairs, shapes_partner


def changed_cells(a, b, side=64, grid=4):
    diff = np.abs(np.asarray(a, int) - np.asarray(b, int)).sum(-1) > 0
    step = side // grid
    return {
        r * grid + c
        for r in range(grid)
        for c in range(grid)
        if diff[r * step : (r + 1) * step, c * step : (c + 1) * step].any()
    }


def test_a_shapes_partner_differs_in_one_object_and_one_cell():
    for sample, partner in counterfactual_pairs(load_samples("shapes", 40, seed=3)):
        n = len(sample.objects)
        assert int(partner.answer) == n - 1 if n > 1 else int(partner.answer) == 2
        assert len(partner.objects) == int(partner.answer)
        (cell,) = set(map(tuple, sample.objects)) ^ set(map(tuple, partner.objects))
        assert changed_cells(sample.image, partner.image) == {cell[0]}  # pixels change in that cell only
        assert partner.question == sample.question and partner.id == sample.id + "-partner"
        assert sample.image.size == partner.image.size


def test_a_removed_object_leaves_the_background():
    sample = next(s for s in load_samples("shapes", 20) if len(s.objects) > 2)
    partner = shapes_partner(sample)
    cell = sample.objects[-1][0]
    pixels = np.asarray(partner.image)[
        (cell // 4) * 16 : (cell // 4 + 1) * 16, (cell % 4) * 16 : (cell % 4 + 1) * 16
    ]
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) == 1


def test_a_sample_without_a_partner_is_a_clear_error(tmp_path):
    sample = make_shapes_sample(0)
    sample.objects, sample.id = None, "photo.jpg"
    with pytest.raises(DatasetError, match="only the synthetic datasets"):
        counterfactual_pairs([sample])


def test_the_chapters_counterfactual_section_on_an_organism():
    """Chapters 3 and 7: pairs from `shapes`, recovery per layer and position class, a table and bullets."""
    from vlmlib import load_model
    from vlmlib.paper import counterfactual

    lm = load_model("paligemma-shapes")
    samples = load_samples("shapes", 6)
    result, note = counterfactual.run_counterfactual(lm, samples, "resid", 4, batch_size=4, max_rows=32)
    assert note is None and result.n_pairs == 4
    rows = result.rows()
    layers, mean, se = counterfactual.recovery_grid(rows)
    assert layers == list(range(lm.num_layers)) and mean.shape == (lm.num_layers, 3)
    assert mean[-1, 2] == pytest.approx(1.0, abs=1e-4)  # the last layer's whole state at the final position
    assert mean[-1, 0] == 0.0  # nothing reads the last layer's image positions
    table = counterfactual.recovery_table(rows)
    assert table.count("\n") == lm.num_layers + 1 and "| 7 |" in table
    (point,) = counterfactual.points(rows, "resid")
    assert "at the final position in layer" in point and "4 pairs" in point
    skipped, why = counterfactual.run_counterfactual(lm, samples, "resid", 0, batch_size=4, max_rows=32)
    assert skipped is None and "not run" in why
    photo = make_shapes_sample(0)
    photo.objects, photo.id = None, "photo.jpg"
    none, why = counterfactual.run_counterfactual(lm, [photo], "attn", 4, batch_size=4, max_rows=32)
    assert none is None and "only the synthetic datasets" in why
