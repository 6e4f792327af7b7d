"""Figures of the observation chapters, drawn from an `Observation` (see `vlmlib.observation`).

Every per-layer plot puts decoder layer i (the module `layers[i]`, 0-based as in `vlmlib.paper.groups`
and the paper's Figure 4) on the x axis, the mean across samples as a line and a band of plus or
minus one spread (standard error of the mean by default) around it.
"""

from __future__ import annotations

import numpy as np

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

# The book's text column is about 680 px wide: figures are drawn at that width (6.8 in at 100 dpi) so
# the browser never shrinks them, with fonts that stay legible there.
COLUMN_WIDTH = 6.8  # inches
BOOK_STYLE = {
    "figure.figsize": (COLUMN_WIDTH, 3.4),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
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

        set_matplotlib_formats("png", dpi=100)
    except ImportError:
        pass


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


def _axes(ax, figsize=None):
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def layer_lines(
    obs,
    names: dict[str, str],
    ax=None,
    band: str = "sem",
    colours: dict | None = None,
    start: int = 0,
    marker: str = "o",
):
    """One line per statistic: {label: statistic name}; band 'sem', 'std' or None."""
    fig, ax = _axes(ax)
    for label, name in names.items():
        mean = obs.mean(name)
        x = np.arange(start, start + len(mean))
        colour = (colours or {}).get(label) or COLOURS.get(label)
        ax.plot(x, mean, marker=marker, ms=3, label=label, color=colour)
        if band:
            spread = obs.sem(name) if band == "sem" else obs.std(name)
            ax.fill_between(x, mean - spread, mean + spread, alpha=0.2, color=ax.lines[-1].get_color())
    integer_ticks(ax)
    ax.legend()
    return fig, ax


def contributions_figure(obs, modality: str, title: str = "", prefix: str = "decoder", band: str = "sem"):
    """Appendix B, Figures 5-8: (a) absolute L2 norms of attention and MLP contributions, (b) relative
    share of attention (eq. 7, per token then averaged) with the MLP's complement stacked above."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(2, 1, figsize=(COLUMN_WIDTH, 5.6))
    layer_lines(
        obs,
        {"attention": f"{prefix}.attn_norm.{modality}", "MLP": f"{prefix}.mlp_norm.{modality}"},
        ax=left,
        band=band,
        colours={"attention": COLOURS["attn"], "MLP": COLOURS["mlp"]},
    )
    left.set(xlabel="layer", ylabel="mean L2 norm of contribution", title=f"(a) {modality} tokens: absolute")
    share = obs.mean(f"{prefix}.attn_share.{modality}")
    spread = (
        obs.sem(f"{prefix}.attn_share.{modality}")
        if band == "sem"
        else obs.std(f"{prefix}.attn_share.{modality}")
    )
    x = np.arange(len(share))
    right.bar(x, share, color=COLOURS["attn"], label="attention")
    right.bar(x, 1 - share, bottom=share, color=COLOURS["mlp"], label="MLP")
    right.errorbar(x, share, yerr=spread, fmt="none", ecolor="k", lw=0.8)
    right.axhline(0.5, color="k", lw=0.5, ls=":")
    right.set(xlabel="layer", ylabel="share of ||attn|| + ||mlp||", ylim=(0, 1))
    right.set_title(f"(b) {modality} tokens: relative", loc="left")
    integer_ticks(right)
    right.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def modality_attention_figure(obs, title: str = "", ax=None, band: str = "sem"):
    """Figure 2: the final token's attention mass on vision and on text keys per layer (eq. 8-9)."""
    fig, ax = layer_lines(
        obs, {"vision": "decoder.last_attn.vision", "text": "decoder.last_attn.text"}, ax=ax, band=band
    )
    ax.set(
        xlabel="layer",
        ylabel="attention mass of the final token",
        ylim=(-0.02, 1.02),
        title=title or "Final-token attention by key modality",
    )
    fig.tight_layout()
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


def quadrant_heatmap(matrix, ax, title: str = "", fmt: str = "{:.4g}"):
    """A 2x2 heatmap of quadrant means, annotated (Appendix C's summary numbers)."""
    image = ax.imshow(matrix, cmap="viridis")
    for i in range(2):
        for j in range(2):
            value = matrix[i][j]
            text = "n/a" if value is None or not np.isfinite(value) else fmt.format(value)
            ax.text(j, i, text, ha="center", va="center", color="w", fontsize=9, path_effects=_outline())
    ax.set_xticks([0, 1], ["vision keys", "text keys"])
    ax.set_yticks([0, 1], ["vision queries", "text queries"])
    ax.set_title(title, fontsize=9)
    return image


def _outline():
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2, foreground="k")]


def pattern_heatmap(pattern: np.ndarray, is_vision: np.ndarray, ax, title: str = ""):
    """Figures 9-10: one sample's head-averaged attention (queries as rows, keys as columns), tokens
    reordered vision first, with the quadrant boundaries drawn."""
    from matplotlib.colors import PowerNorm

    order = np.concatenate([np.flatnonzero(is_vision), np.flatnonzero(~is_vision)])
    n_vis = int(is_vision.sum())
    image = ax.imshow(
        pattern[np.ix_(order, order)], cmap="magma", norm=PowerNorm(0.4), interpolation="nearest"
    )
    for pos in (n_vis - 0.5,):
        ax.axhline(pos, color="c", lw=0.8)
        ax.axvline(pos, color="c", lw=0.8)
    ax.set(xlabel=f"keys (first {n_vis} vision, then text)", ylabel="queries", title=title)
    return image


def update_figure(obs, title: str = "", ax=None, band: str = "sem", modalities=("vision", "text")):
    """Figure 4: Update_S, the mean L2 norm of what layer i (module layers[i]) adds to the residual
    (eq. 6)."""
    fig, ax = layer_lines(obs, {m: f"decoder.update.{m}" for m in modalities}, ax=ax, band=band)
    ax.set(xlabel="layer", ylabel="mean ||H$^{(i+1)}$ - H$^{(i)}$||", title=title or "Residual stream update")
    fig.tight_layout()
    return fig
