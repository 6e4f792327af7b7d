"""Figures of the chapters, drawn for the book's text column and checked before they reach a page.

Every per-layer plot puts a decoder layer on the x axis, numbered from 0 as the paper's figures and
layer groups number them (the layer numbered i is the module `layers[i]`, decoder layer l = i + 1 of
the formulas, which reads H^(l-1) and writes H^(l)), the mean across samples as a line and a band of
plus or minus one spread (standard error of the mean by default) around it.

A figure is drawn for a reader of the column (about 680 px wide) and must survive being read there:
`figure_problems` lists what a reader would trip over (text smaller than 10 px at the column's width,
text cut off at the figure's edge, a legend over the data, lines told apart by colour alone, a colour
scale that does not start at 0), and `show` hands a figure to the page with that record attached, under
a name the page's numbered `{glue:figure}` (caption and alt text) places.
"""

from __future__ import annotations

import numpy as np

from ..params import ParameterError

# One colour-blind-safe palette for the whole book (Okabe and Ito, 2008), one meaning per colour.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000"]
COLOURS = {
    "vision": "#0072B2",
    "text": "#E69F00",
    "attn": "#CC79A7",
    "mlp": "#009E73",
    "all": "#000000",
    "paper": "#D55E00",
}
# Lines are told apart without colour too (a grey-scale print, a colour-vision deficiency): the k-th line
# of a plot gets the k-th line style and marker.
LINE_STYLES = [
    ("-", "o"),
    ("--", "s"),
    (":", "^"),
    ("-.", "D"),
    ((0, (5, 1, 1, 1, 1, 1)), "v"),
    ((0, (1, 1)), "P"),
]

# The book's text column is about 680 px wide (688 px at a 1280 px window): figures are drawn at that
# width (6.8 in at 100 dpi) so the browser never shrinks them, with text of at least 10 px there.
COLUMN_WIDTH = 6.8  # inches
COLUMN_PX = 680  # the text column, in CSS pixels
DPI = 100  # the resolution figures are shown at (the inline backend's and the pages')
MIN_TEXT_PX = 10  # the smallest text a reader of the column should have to read
LAYER_AXIS = "decoder layer (from 0)"
TOWER_AXIS = "vision-tower layer (from 0)"
BOOK_STYLE = {
    "figure.figsize": (COLUMN_WIDTH, 3.4),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.constrained_layout.use": True,  # nothing clipped, nothing overlapping, legends outside included
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "figure.titlesize": 11,
    "legend.fontsize": 9,
    "legend.framealpha": 0.9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def use_book_style() -> None:
    """Column-width figures and the book's palette for every figure a chapter draws."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update({**BOOK_STYLE, "axes.prop_cycle": cycler(color=OKABE_ITO)})
    try:  # the inline backend keeps its own dpi and bbox settings; make them the book's
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png", dpi=DPI)
    except ImportError:
        pass


def book_figure(*args, **kwargs):
    """`plt.subplots` in the book's style whatever the global settings: constrained layout, column width."""
    import matplotlib.pyplot as plt

    kwargs.setdefault("figsize", BOOK_STYLE["figure.figsize"])
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(*args, **kwargs)


def integer_ticks(ax, axis: str = "x") -> None:
    """Layers are whole numbers: never a tick at 0.5."""
    from matplotlib.ticker import MaxNLocator

    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def log_axis(ax, axis: str = "y") -> None:
    """A log scale (one large value must not flatten the rest) labelled in plain numbers, not 6x10^-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    getattr(ax, f"set_{axis}scale")("log")
    which = getattr(ax, f"{axis}axis")
    which.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    which.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def line_style(k: int) -> dict:
    """The k-th line's style and marker (`LINE_STYLES`), as keyword arguments of `ax.plot`."""
    ls, marker = LINE_STYLES[k % len(LINE_STYLES)]
    return {"ls": ls, "marker": marker}


def _axes(ax, figsize=None):
    if ax is not None:
        return ax.figure, ax
    return book_figure(figsize=figsize)


# what a figure's band means, for its caption ({glue:md}`band`): the `band` parameter of chapters 1, 2, 4, 6
BAND_WORDS = {
    "sem": "one standard error of the mean across samples",
    "std": "one standard deviation across samples (the spread of single samples, not of the mean)",
}


def check_band(band):
    """The `band` parameter, checked: 'sem' or 'std' (None: no band)."""
    if band is None or band in BAND_WORDS:
        return band
    raise ParameterError(
        f"parameter 'band' is {band!r}: use 'sem' (standard error of the mean), 'std' (spread across "
        "samples) or None (no band)"
    )


def caption_band(band) -> None:
    """Place what the run's bands mean in its captions ({glue:md}`band`)."""
    caption_text("band", BAND_WORDS.get(check_band(band), "none drawn"))


def layer_lines(
    obs,
    names: dict[str, str],
    ax=None,
    band: str = "sem",
    colours: dict | None = None,
    start: int = 0,
    marker: str | None = None,
    xlabel: str = LAYER_AXIS,
):
    """One line per statistic: {label: statistic name}; band 'sem', 'std' or None. Lines differ in colour
    and in style and marker (`LINE_STYLES`); `marker` forces one marker on every line."""
    fig, ax = _axes(ax)
    first = len(ax.get_lines())
    for k, (label, name) in enumerate(names.items()):
        mean = obs.mean(name)
        x = np.arange(start, start + len(mean))
        colour = (colours or {}).get(label) or COLOURS.get(label)
        style = line_style(first + k)
        if marker is not None:
            style["marker"] = marker
        ax.plot(x, mean, ms=4, label=label, color=colour, **style)
        if check_band(band):
            spread = obs.sem(name) if band == "sem" else obs.std(name)
            ax.fill_between(x, mean - spread, mean + spread, alpha=0.2, color=ax.lines[-1].get_color(), lw=0)
    integer_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.legend()
    return fig, ax


def contributions_figure(obs, modality: str, title: str = "", prefix: str = "decoder", band: str = "sem"):
    """Appendix B, Figures 5-8: (a) absolute L2 norms of attention and MLP contributions, (b) relative
    share of attention (eq. 7, per token then averaged) with the MLP's complement stacked above."""
    fig, (top, bottom) = book_figure(2, 1, figsize=(COLUMN_WIDTH, 5.8))
    xlabel = TOWER_AXIS if prefix == "vision_tower" else LAYER_AXIS
    tokens = "patches" if modality == "all" else f"{modality} tokens"
    layer_lines(
        obs,
        {"attention": f"{prefix}.attn_norm.{modality}", "MLP": f"{prefix}.mlp_norm.{modality}"},
        ax=top,
        band=band,
        colours={"attention": COLOURS["attn"], "MLP": COLOURS["mlp"]},
        xlabel=xlabel,
    )
    top.set(ylabel="mean L2 norm added")
    top.set_title(f"(a) {tokens}: size of each contribution", loc="left")
    share = obs.mean(f"{prefix}.attn_share.{modality}")
    name = f"{prefix}.attn_share.{modality}"
    x = np.arange(len(share))
    bottom.bar(x, share, color=COLOURS["attn"], label="attention")
    bottom.bar(x, 1 - share, bottom=share, color=COLOURS["mlp"], label="MLP", hatch="//", edgecolor="white")
    if check_band(band):
        spread = obs.sem(name) if band == "sem" else obs.std(name)
        bottom.errorbar(x, share, yerr=spread, fmt="none", ecolor="k", lw=0.8)
    bottom.axhline(0.5, color="k", lw=0.6, ls=":")
    bottom.set(xlabel=xlabel, ylabel="share of the two norms", ylim=(0, 1))
    bottom.set_title(f"(b) {tokens}: attention's share, MLP stacked above", loc="left")
    integer_ticks(bottom)
    bottom.legend()
    if title:
        fig.suptitle(title)
    finish(fig)
    return fig


def modality_attention_figure(obs, title: str = "", ax=None, band: str = "sem"):
    """Figure 2: the final token's attention mass on vision and on text keys per layer (eq. 8-9)."""
    fig, ax = layer_lines(
        obs, {"vision": "decoder.last_attn.vision", "text": "decoder.last_attn.text"}, ax=ax, band=band
    )
    ax.set(
        ylabel="final token's attention mass",
        ylim=(-0.02, 1.02),
        title=title or "Final-token attention by key modality",
    )
    finish(fig)
    return fig


def per_token_attention_figure(obs, band: str = "sem"):
    """The final token's attention mass on each modality over that modality's share of the prompt (1 is
    uniform attention), with the first token (an attention sink) left out as dashed lines."""
    fig, ax = book_figure(figsize=(COLUMN_WIDTH, 3.4))
    layer_lines(
        obs,
        {"vision": "decoder.last_attn_ratio.vision", "text": "decoder.last_attn_ratio.text"},
        ax=ax,
        band=band,
    )
    for k, mod in enumerate(("vision", "text")):
        values = obs.mean(f"decoder.last_attn_ratio_nosink.{mod}")
        ax.plot(
            np.arange(len(values)),
            values,
            color=COLOURS[mod],
            ms=4,
            label=f"{mod}, first token left out",
            **line_style(2 + k),
        )
    ax.axhline(1.0, color="grey", lw=0.8, ls=(0, (1, 3)))
    ax.set(ylabel="attention mass / token share", title="Final-token attention per token (1 = uniform)")
    ax.legend()  # all four lines
    finish(fig)
    return fig


QUADRANTS = {"V→V": "vv", "V→T": "vt", "T→V": "tv", "T→T": "tt"}


def quadrant_lines_figure(obs, band: str = "sem"):
    """Appendix C at every layer: top, the mean weight in each query/key block (log scale); bottom, the mass
    a query of one modality puts on the keys of each modality."""
    fig, (top, bottom) = book_figure(2, 1, figsize=(COLUMN_WIDTH, 6.0), sharex=True)
    layer_lines(obs, {k: f"decoder.quadrant.{q}" for k, q in QUADRANTS.items()}, ax=top, band=band)
    top.set(xlabel="", ylabel="mean weight in block")
    top.set_title("(a) block mean (Appendix C's measure)", loc="left")
    log_axis(top)
    layer_lines(obs, {k: f"decoder.quadrant_mass.{q}" for k, q in QUADRANTS.items()}, ax=bottom, band=band)
    bottom.set(ylabel="mass on key modality", ylim=(-0.02, 1.02))
    bottom.set_title("(b) block mass per query", loc="left")
    finish(fig)
    return fig


def quadrant_matrix(obs, layer: int, name: str = "decoder.quadrant", what: str = "mean") -> np.ndarray:
    """2x2 [[V->V, V->T], [T->V, T->T]] (rows: query modality, columns: key modality) at one layer."""
    get = {"mean": obs.mean, "sem": obs.sem, "std": obs.std}[what]
    return np.array(
        [
            [get(f"{name}.vv")[layer], get(f"{name}.vt")[layer]],
            [get(f"{name}.tv")[layer], get(f"{name}.tt")[layer]],
        ]
    )


def quadrant_heatmap(matrix, ax, title: str = "", fmt: str = "{:.2g}", vmax: float | None = None):
    """A 2x2 heatmap of quadrant means, annotated (Appendix C's summary numbers). The colour scale starts
    at 0, so that a small difference between blocks looks small."""
    matrix = np.asarray(matrix, dtype=float)
    top = vmax if vmax is not None else (np.nanmax(matrix) if np.isfinite(matrix).any() else 1.0)
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=top or 1.0)
    for i in range(2):
        for j in range(2):
            value = matrix[i][j]
            text = "n/a" if not np.isfinite(value) else fmt.format(value)
            ax.text(j, i, text, ha="center", va="center", color="w", fontsize=10, path_effects=_outline())
    ax.set_xticks([0, 1], ["vision\nkeys", "text\nkeys"])
    ax.set_yticks([0, 1], ["vision\nqueries", "text\nqueries"])
    ax.spines[:].set_visible(False)
    ax.set_title(title)
    return image


def quadrant_heatmaps_figure(panels: list[tuple[np.ndarray, str]]):
    """One 2x2 block-mean heatmap per (matrix, title), each with its own colour bar from 0."""
    fig, axes = book_figure(1, len(panels), figsize=(COLUMN_WIDTH, 3.2), squeeze=False)
    for ax, (matrix, title) in zip(axes[0], panels):
        image = quadrant_heatmap(matrix, ax, title=title)
        fig.colorbar(image, ax=ax, label="mean weight (from 0)")
    finish(fig)
    return fig


def _outline():
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2, foreground="k")]


def pattern_heatmap(pattern: np.ndarray, is_vision: np.ndarray, ax, title: str = ""):
    """Figures 9-10: one sample's head-averaged attention (queries as rows, keys as columns), tokens
    reordered vision first, with the quadrant boundaries drawn; colour from 0 on a power scale (0.4) so
    that small weights stay visible."""
    from matplotlib.colors import PowerNorm

    order = np.concatenate([np.flatnonzero(is_vision), np.flatnonzero(~is_vision)])
    n_vis = int(is_vision.sum())
    shown = pattern[np.ix_(order, order)]
    image = ax.imshow(
        shown,
        cmap="magma",
        norm=PowerNorm(0.4, vmin=0, vmax=max(float(shown.max()), 1e-9)),
        interpolation="nearest",
    )
    ax.axhline(n_vis - 0.5, color="c", lw=0.8)
    ax.axvline(n_vis - 0.5, color="c", lw=0.8)
    ax.set(xlabel=f"keys (first {n_vis} vision, then text)", ylabel="queries", title=title)
    return image


def pattern_figure(pattern: np.ndarray, is_vision: np.ndarray, title: str = ""):
    """One attention pattern (`pattern_heatmap`) with its colour bar."""
    fig, ax = book_figure(figsize=(COLUMN_WIDTH * 0.8, 4.8))
    image = pattern_heatmap(pattern, is_vision, ax, title=title)
    fig.colorbar(image, ax=ax, label="attention weight (from 0, power scale)")
    finish(fig)
    return fig


def update_figure(obs, title: str = "", ax=None, band: str = "sem", modalities=("vision", "text")):
    """Figure 4: Update_S, the mean L2 norm of what a layer adds to the residual (eq. 6)."""
    fig, ax = layer_lines(obs, {m: f"decoder.update.{m}" for m in modalities}, ax=ax, band=band)
    ax.set(ylabel="mean norm of the update", title=title or "Residual stream update")
    finish(fig)
    return fig


def update_panels_figure(obs, relative: dict, band: str = "sem"):
    """Chapter 6: (a) the absolute update per layer (`update_figure`), (b) the update over the mean norm of
    the stream it changes, on a log scale."""
    fig, (top, bottom) = book_figure(2, 1, figsize=(COLUMN_WIDTH, 6.0), sharex=True)
    update_figure(obs, ax=top, band=band, title="(a) absolute update")
    top.set_title("(a) absolute update", loc="left")
    top.set_xlabel("")
    for k, (m, values) in enumerate(relative.items()):
        bottom.plot(np.arange(len(values)), values, ms=4, label=m, color=COLOURS.get(m), **line_style(k))
    bottom.set(xlabel=LAYER_AXIS, ylabel="update / mean norm of the stream")
    bottom.set_title("(b) relative to the stream's size", loc="left")
    log_axis(bottom)
    integer_ticks(bottom)
    bottom.legend()
    finish(fig)
    return fig


def tower_lines_figure(obs, name: str, ylabel: str, title: str, band: str = "sem"):
    """One statistic over the vision tower's own layers (all its patches), no legend."""
    fig, ax = layer_lines(obs, {"all": name}, band=band, xlabel=TOWER_AXIS)
    ax.get_legend().remove()
    ax.set(ylabel=ylabel, title=title)
    finish(fig)
    return fig


# ---------------------------------------------------------------- the input images


def vision_token_grid(lm, sample) -> tuple[int, int] | None:
    """(rows, columns) of the vision tokens the decoder reads for one sample's image, as a grid over the image
    (its family says: `Family.vision_token_grid`), or None where they are not one grid (a split image)."""
    inputs = lm.encode_samples([sample])
    return lm.family.vision_token_grid(lm.model, lm.processor, inputs)


def input_images_figure(samples, grid: tuple[int, int] | None = None, n: int = 8, columns: int = 4):
    """What the model sees: the first n images, each titled with its answer (the count), the first with the
    grid of its vision tokens drawn over it and numbered in reading order."""
    from matplotlib import patheffects

    shown = list(samples)[:n]
    rows = -(-len(shown) // columns)
    fig, axes = book_figure(rows, columns, figsize=(COLUMN_WIDTH, 1.95 * rows + 0.2), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for k, (ax, sample) in enumerate(zip(axes.flat, shown)):
        image = np.asarray(sample.image.convert("RGB"))
        ax.imshow(image, interpolation="nearest")
        answer = getattr(sample, "answer", None)
        ax.set_title(f"answer: {answer}" if answer not in (None, "") else f"image {k + 1}")
        if k == 0 and grid is not None:
            height, width = image.shape[:2]
            outline = [patheffects.withStroke(linewidth=2.2, foreground="black")]
            for r in range(1, grid[0]):
                ax.axhline(r * height / grid[0] - 0.5, color="white", lw=1.2, path_effects=outline)
            for c in range(1, grid[1]):
                ax.axvline(c * width / grid[1] - 0.5, color="white", lw=1.2, path_effects=outline)
            if grid[0] * grid[1] <= 36:
                for r in range(grid[0]):
                    for c in range(grid[1]):
                        ax.text(
                            (c + 0.5) * width / grid[1] - 0.5,
                            (r + 0.5) * height / grid[0] - 0.5,
                            str(r * grid[1] + c),
                            ha="center",
                            va="center",
                            color="white",
                            fontsize=8,
                            path_effects=outline,
                        )
    finish(fig)
    return fig


# ---------------------------------------------------------------- legends where they hide nothing


LEGEND_CORNERS = (
    "upper right",
    "upper left",
    "lower right",
    "lower left",
    "center right",
    "center left",
    "upper center",
    "lower center",
)


def _renderer(fig):
    if not hasattr(fig.canvas, "get_renderer"):  # a Figure made without pyplot has no drawing canvas
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    fig.canvas.draw()  # runs the layout engine: positions are final
    return fig.canvas.get_renderer()


def data_shapes(ax) -> list[tuple]:
    """What a legend must not cover in an axes, in display pixels: ("path", Path, filled) for lines, bands,
    bars and error bars, ("box", Bbox) for images and text inside the axes."""
    from matplotlib.collections import Collection
    from matplotlib.image import AxesImage
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.text import Text

    shapes = []
    for artist in ax.get_children():
        if not artist.get_visible() or artist is ax.patch or artist is ax.get_legend():
            continue
        if isinstance(artist, Line2D):
            path = artist.get_transform().transform_path(artist.get_path())
            shapes.append(("path", path, False))
        elif isinstance(artist, Collection):
            transform = artist.get_transform()
            for path in artist.get_paths():
                shapes.append(("path", transform.transform_path(path), artist.get_facecolor().size > 0))
        elif isinstance(artist, Patch) and not getattr(artist, "_vlmlib_not_data", False):
            if artist in ax.spines.values():
                continue
            shapes.append(
                ("path", artist.get_transform().transform_path(artist.get_path()), artist.get_fill())
            )
        elif isinstance(artist, AxesImage):
            shapes.append(("box", artist.get_window_extent()))
        elif (
            isinstance(artist, Text)
            and artist.get_text()
            and artist not in (ax.title, ax._left_title, ax._right_title)
        ):
            shapes.append(("box", artist.get_window_extent()))
    return shapes


def _covers(box, shapes) -> bool:
    for shape in shapes:
        if shape[0] == "box":
            if box.overlaps(shape[1]):
                return True
        else:
            _, path, filled = shape
            if not np.isfinite(path.vertices).all():  # a missing value (a NaN bar) is drawn nowhere
                path = path.cleaned(remove_nans=True)
                if not len(path.vertices) or not np.isfinite(path.vertices).all():
                    continue
            if len(path.vertices) == 1 and box.contains(*path.vertices[0]):
                return True
            if path.intersects_bbox(box, filled=filled):
                return True
    return False


def place_legend(ax, pad_px: float = 4.0):
    """Move an axes' legend to the first corner where it covers no data (`LEGEND_CORNERS`), else outside
    the axes, to the right (beside a title) or above it; keeps its entries, columns and font size."""
    old = ax.get_legend()
    if old is None:
        return None
    handles, labels = old.legend_handles, [t.get_text() for t in old.get_texts()]
    options = {"ncols": old._ncols, "fontsize": old._fontsize, "title": old.get_title().get_text() or None}
    old.remove()
    fig = ax.figure
    renderer = _renderer(fig)
    shapes = data_shapes(ax)
    for loc in LEGEND_CORNERS:
        legend = ax.legend(handles, labels, loc=loc, **options)
        box = legend.get_window_extent(renderer).padded(pad_px)
        if not _covers(box, shapes):
            return legend
        legend.remove()
    if ax.get_title() or ax.get_title(loc="left"):  # a title sits above the axes: to the right, one column
        options["ncols"] = 1
        return ax.legend(
            handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, **options
        )
    for ncols in range(min(len(labels), 4), 0, -1):  # above the axes, in as few rows as the width holds
        options["ncols"] = ncols
        legend = ax.legend(
            handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.01), borderaxespad=0, **options
        )
        if ncols == 1 or legend.get_window_extent(renderer).width <= 0.9 * fig.bbox.width:
            return legend
        legend.remove()


def finish(fig):
    """Every axes' legend moved to where it hides no data (`place_legend`), x tick labels too long to stand
    side by side slanted, the layout settled."""
    renderer = _renderer(fig)
    for ax in fig.axes:
        if ax.get_visible() and ax.axison and _colliding_ticks(ax, ax.xaxis, "x", renderer):
            for label in ax.get_xticklabels():
                label.set(rotation=35, ha="right", rotation_mode="anchor")
            renderer = _renderer(fig)
    for ax in fig.axes:
        if ax.get_legend() is not None:
            place_legend(ax)
    _renderer(fig)
    return fig


# ---------------------------------------------------------------- what a reader would trip over


def figure_texts(fig) -> list:
    """Every text a reader of the figure sees: titles, axis labels, the tick labels drawn, legends,
    annotations (call after a draw: which ticks are drawn depends on the layout)."""
    found = list(fig.texts) + [getattr(fig, "_suptitle", None)]
    for legend in fig.legends:
        found += [*legend.get_texts(), legend.get_title()]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        found += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis) if ax.axison else ():
            if not axis.get_visible():
                continue
            found.append(axis.label)
            for tick in axis._update_ticks():  # the ticks in view: those drawn
                found += [tick.label1, tick.label2]
        if ax.get_legend() is not None:
            found += [*ax.get_legend().get_texts(), ax.get_legend().get_title()]
    return [t for t in found if t is not None and t.get_visible() and t.get_text().strip()]


def text_px(fig, text, column_px: float = COLUMN_PX, dpi: float = DPI) -> float:
    """A text's height in CSS pixels as a reader of the column sees it: its size in points at `dpi`, scaled
    down when the figure is wider than the column (the browser shrinks it to fit)."""
    width_px = fig.get_figwidth() * dpi
    return text.get_fontsize() * dpi / 72 * min(1.0, column_px / width_px)


def small_text(
    fig, column_px: float = COLUMN_PX, dpi: float = DPI, minimum: float = MIN_TEXT_PX
) -> list[str]:
    """Texts (ticks, labels, legend entries, titles, annotations) under `minimum` px at the column's width."""
    return [
        f"text {t.get_text()[:40]!r} is {text_px(fig, t, column_px, dpi):.1f} px at a {column_px:g} px column"
        for t in figure_texts(fig)
        if text_px(fig, t, column_px, dpi) < minimum - 1e-9
    ]


def clipped_text(fig, tolerance: float = 1.0) -> list[str]:
    """Texts that stick out of the figure (cut off when it is saved without a tight bounding box)."""
    renderer = _renderer(fig)
    page = fig.bbox
    out = []
    for t in figure_texts(fig):
        box = t.get_window_extent(renderer)
        if (
            box.x0 < page.x0 - tolerance
            or box.y0 < page.y0 - tolerance
            or box.x1 > page.x1 + tolerance
            or box.y1 > page.y1 + tolerance
        ):
            out.append(f"text {t.get_text()[:40]!r} is cut off at the figure's edge")
    return out


def legend_over_data(fig, pad_px: float = 1.0) -> list[str]:
    """Legends that cover lines, bands, bars, images or annotations of their axes."""
    renderer = _renderer(fig)
    out = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None or not legend.get_visible():
            continue
        if _covers(legend.get_window_extent(renderer).padded(-pad_px), data_shapes(ax)):
            title = ax.get_title() or ax.get_title(loc="left") or ax.get_ylabel()
            out.append(f"the legend of {title!r} covers data")
    for legend in fig.legends:
        box = legend.get_window_extent(renderer).padded(-pad_px)
        if any(_covers(box, data_shapes(ax)) for ax in fig.axes):
            out.append("a figure legend covers data")
    return out


def indistinct_lines(fig) -> list[str]:
    """Legend entries for lines that only colour tells apart (the same line style and marker)."""
    from matplotlib.lines import Line2D

    out = []
    for legend in [ax.get_legend() for ax in fig.axes] + list(fig.legends):
        if legend is None:
            continue
        seen = {}
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            if not isinstance(handle, Line2D):
                continue
            # a custom dash pattern reads as "--" from get_linestyle: compare the pattern itself
            dashes = getattr(handle, "_unscaled_dash_pattern", None)
            key = (str(handle.get_linestyle()), str(dashes), str(handle.get_marker()))
            if key in seen:
                out.append(f"{seen[key]!r} and {text.get_text()!r} differ only in colour")
            seen.setdefault(key, text.get_text())
    return out


def unanchored_scales(fig) -> list[str]:
    """Colour scales (heatmaps) that do not include 0: a small difference would look large."""
    from matplotlib.image import AxesImage

    out = []
    for ax in fig.axes:
        for image in ax.get_images():
            if not isinstance(image, AxesImage) or np.asarray(image.get_array()).ndim != 2:
                continue  # a photograph (RGB) has no scale
            if image.norm.vmin is not None and image.norm.vmin > 0:
                out.append(
                    f"colour scale of {ax.get_title()!r} starts at {image.norm.vmin:.3g}, not 0: it "
                    "overstates differences"
                )
    return out


def _texts_collide(a, b, box_a, box_b, axis: str) -> bool:
    """Two tick labels run into each other: their boxes overlap, or, rotated (slanted x labels), their
    parallel lines of text are closer than a line's height."""
    angle = np.deg2rad(a.get_rotation() % 180)
    if axis == "y" or np.isclose(np.sin(angle), 0) or not box_a.overlaps(box_b):
        return box_a.overlaps(box_b)
    height = a.get_fontsize() * a.figure.dpi / 72
    return abs(box_a.x1 - box_b.x1) * abs(np.sin(angle)) < 0.9 * height


def _colliding_ticks(ax, axis, name: str, renderer) -> list[tuple[str, str]]:
    labels = [
        t
        for tick in axis._update_ticks()
        for t in (tick.label1, tick.label2)
        if t.get_visible() and t.get_text().strip()
    ]
    boxes = [t.get_window_extent(renderer) for t in labels]
    return [
        (labels[i].get_text(), labels[j].get_text())
        for i in range(len(boxes))
        for j in range(i + 1, len(boxes))
        if _texts_collide(labels[i], labels[j], boxes[i], boxes[j], name)
    ]


def overlapping_ticks(fig) -> list[str]:
    """Tick labels of one axis that run into each other (too many ticks for the panel's width)."""
    renderer = _renderer(fig)
    out = []
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison:
            continue
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            out += [
                f"{name} tick labels {first!r} and {second!r} overlap"
                for first, second in _colliding_ticks(ax, axis, name, renderer)
            ]
    return out


def figure_problems(fig, column_px: float = COLUMN_PX, dpi: float = DPI) -> list[str]:
    """Everything `small_text`, `clipped_text`, `overlapping_ticks`, `legend_over_data`, `indistinct_lines`
    and `unanchored_scales` find: what a reader of the column would trip over. Empty for a figure fit for
    the book."""
    return [
        *small_text(fig, column_px, dpi),
        *clipped_text(fig),
        *overlapping_ticks(fig),
        *legend_over_data(fig),
        *indistinct_lines(fig),
        *unanchored_scales(fig),
    ]


def show(fig, name: str, alt: str | None = None, caption: str | None = None) -> None:
    """Hand a finished figure to the page under `name`: shown in the notebook, and placed by the page's
    numbered `{glue:figure}` directive (its caption and alt text) where the book is built (the figure's cell
    carries the tag remove-output, so it is not shown twice). A figure no directive places (drawn by a
    library function, an exercise's solution) gives its `alt` text and, to be a numbered figure, its
    `caption` (plain text) here: the book's Sphinx extension (vlmlib.book.sphinx_figures) reads them. The
    output records `figure_problems` (metadata "vlmlib"), so that a test of the built book can read them
    back."""
    import matplotlib.pyplot as plt
    from IPython.core.formatters import format_display_data
    from IPython.display import display

    finish(fig)
    problems = figure_problems(fig)
    smallest = min((text_px(fig, t) for t in figure_texts(fig)), default=None)
    bundle, metadata = format_display_data(fig)
    record = {"figure": name, "problems": problems, "smallest_text_px": smallest}
    if alt:
        record["alt"] = alt
    if caption:
        record["caption"] = caption
    metadata = {
        **metadata,
        "scrapbook": {"name": name, "mime_prefix": ""},  # what myst-nb's glue writes and reads
        "vlmlib": record,
    }
    display(bundle, raw=True, metadata=metadata)
    plt.close(fig)


def caption_text(name: str, text: str) -> None:
    """A piece of a caption the run computes ("4 × 4 = 16"), placed in the page's caption by
    {glue:md}`name` (Markdown; nothing is shown where the cell is)."""
    from IPython.display import Markdown
    from myst_nb import glue

    glue(name, Markdown(text), display=False)


def show_absent(name: str, why: str) -> None:
    """Where a chapter draws a figure only when its run allows it (no counterfactual pairs on photographs):
    the page's `{glue:figure}` under `name` then shows why there is no figure."""
    caption_text(name, why)
