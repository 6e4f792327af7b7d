"""Every figure function of the book, drawn at the column's width, is fit for a reader: no text under 10 px,
nothing cut off, no legend over data, lines told apart without colour, colour scales from 0
(`vlmlib.paper.figures.figure_problems`). And each of those checks fails on a figure that does it wrong."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vlmlib import load_model, shapes_samples  # noqa: E402
from vlmlib.book.pages import bar_figure, line_figure  # noqa: E402
from vlmlib.paper import figures as F  # noqa: E402
from vlmlib.paper.counterfactual import POSITIONS, recovery_figure  # noqa: E402
from vlmlib.paper.patching import delta_figure  # noqa: E402


class FakeObservation:
    """What the figure functions read from an Observation: per-layer means, spreads, a sample count."""

    n_samples = 40

    def __init__(self, layers: int = 8):
        self.layers = layers

    def mean(self, name: str) -> np.ndarray:
        rng = np.random.default_rng(sum(map(ord, name)))
        if any(key in name for key in ("share", "last_attn.", "quadrant_mass", "cosine")):
            return rng.uniform(0.2, 0.95, self.layers)
        if "quadrant." in name:
            return rng.uniform(0.01, 0.05, self.layers)
        return rng.uniform(1, 100, self.layers)

    def sem(self, name: str) -> np.ndarray:
        return self.mean(name) * 0.05

    def std(self, name: str) -> np.ndarray:
        return self.mean(name) * 0.2


@pytest.fixture(autouse=True)
def book_style():
    F.use_book_style()
    yield
    plt.close("all")


def _probe_figure():
    from test_probing import synthetic

    from vlmlib.paper.probing import probe_figure
    from vlmlib.probing import cross_layer_probes

    X, labels = synthetic(layers=4, signal_layers=(3,))
    probes = {name: cross_layer_probes(X, labels, train_layers=[2, 3], folds=2) for name in ("a", "b", "c")}
    return probe_figure(probes, paper={"plateau_accuracy": [0.55, 0.63], "spike_accuracy": 0.9})


def _patching_rows():
    rows = []
    for condition in ("answer", "low-rank"):
        for kind, positions in (("attn", "vision"), ("attn", "text"), ("vision_attn", "all")):
            for k, label in enumerate(("early->mid", "late->mid", "early->late", "mid->late", "mid->final")):
                value = (k - 2) * 0.7 + (0.4 if positions == "text" else 0.0)
                rows.append(
                    {
                        "condition": condition,
                        "kind": kind,
                        "positions": positions,
                        "label": label,
                        "delta_logprob": value,
                        "delta_logprob_se": 0.1,
                    }
                )
    return rows


def _recovery_rows():
    return [
        {"layer": layer, "positions": p, "recovery": min(1.0, layer / 6) * (j + 1) / 3, "recovery_se": 0.05}
        for layer in range(8)
        for j, p in enumerate(POSITIONS)
    ]


def _side_by_side_lines():
    rng = np.random.default_rng(0)
    curves = {
        part: {label: (rng.uniform(0.5, 1, 8), np.full(8, 0.02)) for label in ("vision", "text")}
        for part in ("paligemma", "qwen2vl")
    }
    # a y label as long as a chapter's: it must not be cut off at the figure's height
    return line_figure(curves, "AvgSim: cosine of a layer's input and output", "decoder layer (from 0)")[0]


def _side_by_side_bars():
    labels = [
        f"attention, {where} positions: {d}"
        for where in ("vision", "text")
        for d in ("early→mid", "mid→late")
    ]
    bars = {
        part: {label: (0.3 * k - 0.4, 0.05) for k, label in enumerate(labels)}
        for part in ("paligemma", "qwen2vl")
    }
    return bar_figure(bars, "Δ log p(target)")


def _pattern():
    rng = np.random.default_rng(0)
    return F.pattern_figure(rng.dirichlet(np.ones(24), 24), np.arange(24) < 16, "sample 0, layer 4")


OBS = FakeObservation()
FIGURES = {
    "contributions": lambda: F.contributions_figure(OBS, "vision", title="Contributions to vision tokens"),
    "contributions in the tower": lambda: F.contributions_figure(OBS, "all", prefix="vision_tower"),
    "attention by modality": lambda: F.modality_attention_figure(OBS),
    "attention per token": lambda: F.per_token_attention_figure(OBS),  # four lines, all in the legend
    "quadrants per layer": lambda: F.quadrant_lines_figure(OBS),
    "quadrant heatmaps": lambda: F.quadrant_heatmaps_figure(
        [(F.quadrant_matrix(OBS, 3), "ours: layer 3"), (np.array([[1e-3, 4e-4], [1e-4, 2e-3]]), "paper")]
    ),
    "attention pattern": _pattern,
    "update": lambda: F.update_figure(OBS),
    "update, two panels": lambda: F.update_panels_figure(
        OBS, {"vision": OBS.mean("a") / 90, "text": OBS.mean("b") / 90}
    ),
    "tower lines": lambda: F.tower_lines_figure(OBS, "vision_tower.cosine.all", "AvgSim", "Inside the tower"),
    "input images": lambda: F.input_images_figure(shapes_samples(8, seed=0), grid=(4, 4)),
    "probes": _probe_figure,
    "patching bars": lambda: delta_figure(_patching_rows()),
    "recovery": lambda: recovery_figure(_recovery_rows(), "attn"),
    "side by side, lines": _side_by_side_lines,
    "side by side, bars": _side_by_side_bars,
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_is_fit_for_the_column(name):
    fig = F.finish(FIGURES[name]())
    dpi = (
        150 if name.startswith("side by side") else F.DPI
    )  # the generated pages save at 150 dpi, shown at 680 px
    assert F.figure_problems(fig, dpi=dpi) == [], name
    assert fig.get_figwidth() <= F.COLUMN_WIDTH + 1e-9, f"{name} is wider than the column"
    texts = F.figure_texts(fig)
    assert texts and min(F.text_px(fig, t, dpi=dpi) for t in texts) >= F.MIN_TEXT_PX


def test_the_vision_token_grid_is_read_from_the_processor():
    sample = shapes_samples(1, seed=0)[0]
    for name in ("paligemma-random", "qwen2vl-random"):
        lm = load_model(name, device="cpu", dtype="float32")
        rows, columns = F.vision_token_grid(lm, sample)
        inputs = lm.encode_samples([sample])
        assert rows * columns == int(lm.vision_mask(inputs)[0].sum()), name


# ---------------------------------------------------------------- each check fails on a bad figure


def _bad_lines(**plot):
    fig, ax = plt.subplots(figsize=(F.COLUMN_WIDTH, 3), layout="constrained")
    x = np.arange(8)
    ax.plot(x, x / 8, label="vision", **plot)
    ax.plot(x, 1 - x / 8, label="text", **plot)
    return fig, ax


def test_small_text_is_found():
    fig, ax = _bad_lines()
    ax.tick_params(labelsize=6)  # 8.3 px at 100 dpi
    assert F.small_text(fig) and all("px at a 680 px column" in p for p in F.small_text(fig))
    wide, ax = plt.subplots(figsize=(F.COLUMN_WIDTH * 2, 3))  # shrunk by half in the column
    ax.set_xlabel("layer", fontsize=10)
    assert any("'layer'" in p for p in F.small_text(wide))


def test_clipped_text_is_found():
    fig, ax = plt.subplots(figsize=(F.COLUMN_WIDTH, 3))  # no layout engine: a long label runs off
    ax.set_ylabel("a y label " * 12)
    ax.set_xticks([0, 1], ["far beyond the right edge of the figure " * 3, ""])
    assert F.clipped_text(fig)
    fig.set_layout_engine("constrained")
    ax.set_ylabel("short")
    ax.set_xticks([0, 1], ["0", "1"])
    assert F.clipped_text(fig) == []


def test_overlapping_ticks_are_found():
    fig, ax = plt.subplots(figsize=(2, 2), layout="constrained")
    ax.set_xticks(range(40), [f"layer {i}" for i in range(40)])
    assert F.overlapping_ticks(fig)


def test_a_legend_over_data_is_found_and_place_legend_moves_it():
    fig, ax = _bad_lines()
    ax.plot([0, 7], [0.5, 0.5], color="k")  # crosses the middle too
    ax.legend(loc="center")
    assert F.legend_over_data(fig)
    F.place_legend(ax)
    assert F.legend_over_data(fig) == []
    full, ax = plt.subplots(figsize=(F.COLUMN_WIDTH, 3), layout="constrained")
    ax.bar(range(8), np.ones(8), label="fills the axes")  # no free corner: the legend goes outside
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right")
    assert F.legend_over_data(full)
    F.place_legend(ax)
    assert F.legend_over_data(full) == [] and F.clipped_text(full) == []


def test_lines_told_apart_by_colour_alone_are_found():
    fig, ax = _bad_lines(ls="-", marker="o")
    ax.legend()
    assert F.indistinct_lines(fig) == ["'vision' and 'text' differ only in colour"]
    fig, ax = _bad_lines()
    ax.lines[1].set_linestyle((0, (8, 3)))  # a custom dash pattern is a style of its own
    ax.lines[0].set_linestyle((0, (1, 1)))
    ax.legend()
    assert F.indistinct_lines(fig) == []


def test_a_colour_scale_that_does_not_start_at_zero_is_found():
    fig, ax = plt.subplots()
    ax.imshow(np.array([[0.046, 0.047], [0.036, 0.04]]))  # autoscaled: a 1% difference fills the scale
    assert F.unanchored_scales(fig)
    fig, ax = plt.subplots()
    F.quadrant_heatmap(np.array([[0.046, 0.047], [0.036, 0.04]]), ax)
    assert F.unanchored_scales(fig) == []


def test_show_records_the_checks_for_the_built_book(monkeypatch):
    shown = []
    monkeypatch.setattr(
        "IPython.display.display", lambda bundle, raw, metadata: shown.append((bundle, metadata))
    )
    fig, ax = _bad_lines()
    ax.tick_params(labelsize=5)
    ax.legend()
    F.show(fig, "bad", alt="Two crossing lines")
    bundle, metadata = shown[0]
    assert "image/png" in bundle and metadata["scrapbook"] == {"name": "bad", "mime_prefix": ""}
    record = metadata["vlmlib"]
    assert record["alt"] == "Two crossing lines" and record["smallest_text_px"] < F.MIN_TEXT_PX
    assert any("px" in p for p in record["problems"]) and any("colour" in p for p in record["problems"])


def test_every_line_of_the_per_token_figure_is_in_its_legend():
    fig = F.per_token_attention_figure(FakeObservation())
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["vision", "text", "vision, first token left out", "text, first token left out"]


def test_a_band_typo_is_refused_and_the_caption_says_what_the_band_is(monkeypatch):
    """`band="ssem"` once drew the spread across samples under a caption that said standard error."""
    from vlmlib.paper import figures
    from vlmlib.params import ParameterError

    with pytest.raises(ParameterError, match="'sem'.*'std'.*None"):
        figures.check_band("ssem")
    said = {}
    monkeypatch.setattr(figures, "caption_text", lambda name, text: said.__setitem__(name, text))
    figures.caption_band("std")
    assert said == {"band": figures.BAND_WORDS["std"]} and "deviation" in said["band"]
    figures.caption_band(None)
    assert said["band"] == "none drawn"
