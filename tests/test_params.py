"""Parameters as people type them (vlmlib.params), the same for the runner and for a direct papermill run."""

import os
from pathlib import Path

import pytest

from vlmlib.params import ParameterError, as_float, as_int, as_list, as_path, coerce


def test_lists_from_comma_separated_text_never_letter_by_letter():
    assert as_list("early->mid,late->mid", "directions") == ["early->mid", "late->mid"]
    assert as_list("vision", "positions") == ["vision"]
    assert as_list(" a , b ", "x") == ["a", "b"]
    assert as_list(("a", "b"), "x") == ["a", "b"]
    with pytest.raises(ParameterError, match="'directions'.*empty item"):
        as_list("a,,b", "directions")
    with pytest.raises(ParameterError, match="'positions' should be a list"):
        as_list(3, "positions")


@pytest.mark.parametrize(
    "value, call, message",
    [
        ("abc", lambda v: as_int(v, "n_samples", minimum=1), "'n_samples' should be an integer, got 'abc'"),
        ("abc", lambda v: as_int(v, "seed", minimum=0), "'seed' should be an integer"),
        (-1, lambda v: as_int(v, "seed", minimum=0), "'seed' should be at least 0, got -1"),
        (0, lambda v: as_int(v, "n_samples", minimum=1), "'n_samples' should be at least 1"),
        (2.5, lambda v: as_int(v, "batch_size"), "'batch_size' should be an integer"),
        (True, lambda v: as_int(v, "seed"), "'seed' should be an integer"),
        ("x", lambda v: as_float(v, "lr"), "'lr' should be a number"),
    ],
)
def test_numbers_are_checked_with_the_parameters_name(value, call, message):
    with pytest.raises(ParameterError, match=message):
        call(value)


def test_numbers_from_text():
    assert as_int("16", "n_samples", minimum=1) == 16 and as_int(4.0, "n") == 4
    assert as_float("0.5", "x") == 0.5 and as_float(2, "x") == 2.0


def test_paths_are_absolute_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert as_path("data", "dataset") == tmp_path / "data"
    with pytest.raises(ParameterError, match=f"'dataset'.*tried {tmp_path / 'nope'}"):
        as_path("nope", "dataset")
    assert as_path("~", "home") == Path(os.path.expanduser("~"))


def test_coerce_follows_the_defaults_type():
    assert coerce("early->mid,late->mid", (list,), "directions") == ["early->mid", "late->mid"]
    assert coerce("['vision']", (list,), "positions") == ["vision"]
    assert coerce("32", (int,), "n_samples") == 32
    assert coerce("0", (str,), "device") == "0"  # text stays text
    assert coerce("'cuda'", (str,), "device") == "cuda"
    assert coerce("3", (float, int), "alpha") == 3.0
    assert coerce('{"early": [1, 2]}', (str, dict), "groups") == {"early": [1, 2]}
    assert coerce("paper", (str, dict), "groups") == "paper"
    assert coerce("None", (), "quadrant_layer") is None and coerce("7", (), "quadrant_layer") == 7
    with pytest.raises(ParameterError, match="'groups' should be a dict"):
        coerce("scaled", (dict,), "groups")
    with pytest.raises(ParameterError, match="'seed' should be at least 0"):
        coerce("-1", (int,), "seed", minimum=0)
