"""Probing as the paper reports it: our numbers in its terms (plateau, spike, transfer drop), the results
chapter 5 writes, and Figure 3 redrawn with its controls."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..probing import FEATURE_SETS, ProbeResult, mean_std, missing_numbers


def _fold_stat(per_fold: np.ndarray, name: str) -> dict:
    """{name_mean, name_std} of a per-fold quantity."""
    return {
        f"{name}_mean": float(per_fold.mean()),
        f"{name}_std": float(per_fold.std(ddof=1)) if len(per_fold) > 1 else 0.0,
    }


def paper_style_summary(result: ProbeResult) -> dict:
    """Our numbers in the paper's terms (names in the module docstring).

    The paper's "plateau" (about 55-63%) is the accuracy of the late-trained probes on the other
    states, its "spike" (about 90%) their accuracy on the trained states. Its claim that late probes
    "degraded when applied to earlier layers" is `transfer_drop`: the last-state probe on the last
    state minus the same probe on the early states (those outside the train layers), per fold.
    `own_on_early` says whether the category is readable on those states at all. Early states and
    plateau are empty when the probes are trained on every state; their numbers are then left out.
    """
    mean = result.mean.mean(0)  # averaged over the train layers, per eval layer
    trained = [e for e in result.eval_layers if e in result.train_layers]
    early = [e for e in result.eval_layers if e not in result.train_layers]
    last = result.eval_layers[-1]
    transfer = result.transfer_from_last  # (folds, states)
    out = {
        "trained_layers": trained,
        "trained_layers_mean": float(mean[trained].mean()),
        "diagonal_mean": float(np.mean([result.mean[i, t] for i, t in enumerate(result.train_layers)])),
        "last_state": last,
        "early_states": early,
        **_fold_stat(transfer[:, last], "transfer_on_last"),
        "chance": result.chance,
        "majority": result.majority,
        "folds": result.folds,
    }
    if early:
        out.update(
            plateau_layers=early,
            plateau_min=float(mean[early].min()),
            plateau_max=float(mean[early].max()),
            plateau_mean=float(mean[early].mean()),
        )
        out.update(_fold_stat(transfer[:, early].mean(1), "transfer_on_early"))
        out.update(_fold_stat(transfer[:, last] - transfer[:, early].mean(1), "transfer_drop"))
    if result.has_controls:
        out.update(_fold_stat(result.own_layer.mean(1), "own_layer"))
        out.update(_fold_stat(result.control.mean(1), "control"))
        if early:
            out.update(_fold_stat(result.own_layer[:, early].mean(1), "own_on_early"))
    return out


def probing_results(
    probes: Mapping[str, ProbeResult], rescaled: Mapping[str, ProbeResult] | None = None
) -> dict:
    """The numbers chapter 5 writes (names in the module docstring); an error, not a null, where one
    is missing. `probes` need controls; `rescaled` are the same probes with the other scaling."""
    out = {
        "feature_sets": {name: FEATURE_SETS.get(name, name) for name in probes},
        "probes": {},
        "summary": {},
    }
    for name, res in probes.items():
        res.require_controls(f"the results of feature set {name!r}")
        out["probes"][name] = res.summary()
        out["summary"][name] = paper_style_summary(res)
    if rescaled:
        keep = ("transfer_", "plateau_", "trained_layers", "diagonal_mean", "early_states", "last_state")
        out["probes_other_scaling"] = {
            name: {
                "scaling": r.scaling,
                "accuracy": mean_std(r.accuracy),
                "transfer_from_last": mean_std(r.transfer_from_last),
                **{k: v for k, v in paper_style_summary(r).items() if k.startswith(keep)},
            }
            for name, r in rescaled.items()
        }
    missing = missing_numbers(out)
    if missing:
        raise ValueError(
            f"probing results have {len(missing)} missing numbers (e.g. {missing[:3]}): a bug, "
            "not something to write as null"
        )
    return out


# ---------------------------------------------------------------- figures


def probe_figure(
    results: Mapping[str, ProbeResult], paper: dict | None = None, columns: int = 2, panel_height: float = 2.3
):
    """Figure 3 redrawn with its controls, one panel per feature set (shared axes): held-out accuracy on
    every state of the probe trained on the last state (bold, band one s.d. across folds) and of the
    other late-trained probes (thin), the own-layer probe (dashed), the shuffled-label control (dotted),
    chance (grey); the paper's plateau and spike in orange where given. Drawn at the book's column width."""
    from .figures import COLOURS, COLUMN_WIDTH, book_figure, integer_ticks

    names = list(results)
    rows = -(-len(names) // columns)
    fig, axes = book_figure(
        rows,
        columns,
        figsize=(COLUMN_WIDTH, panel_height * rows + 1.6),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        res = results[name]
        x = np.array(res.eval_layers)
        last = int(np.argmax(res.train_layers))
        if paper and paper.get("plateau_accuracy"):
            lo, hi = paper["plateau_accuracy"]
            ax.axhspan(
                lo, hi, color=COLOURS["paper"], alpha=0.12, lw=0, label=f"paper: plateau ({lo:.0%}-{hi:.0%})"
            )
        if paper and paper.get("spike_accuracy") is not None:
            ax.axhline(
                paper["spike_accuracy"],
                color=COLOURS["paper"],
                ls="-.",
                lw=1,
                label=f"paper: trained layers (~{paper['spike_accuracy']:.0%})",
            )
        for i, t in enumerate(res.train_layers):
            if i != last:
                ax.plot(
                    x,
                    res.mean[i],
                    color="#0072B2",
                    lw=0.8,
                    alpha=0.45,
                    label="other late-trained probes" if i == 0 else None,
                )
        transfer = mean_std(res.transfer_from_last)
        ax.plot(
            x,
            transfer["mean"],
            color="#0072B2",
            lw=2,
            marker="o",
            ms=3,
            label=f"trained on the last state ({res.train_layers[last]})",
        )
        ax.fill_between(
            x,
            transfer["mean"] - transfer["std"],
            transfer["mean"] + transfer["std"],
            color="#0072B2",
            alpha=0.15,
            lw=0,
        )
        if res.has_controls:
            ax.plot(
                x, res.own_layer.mean(0), ls="--", color="black", lw=1.2, label="trained on each state itself"
            )
            ax.plot(x, res.control_mean, ls=":", color="#D55E00", lw=1.5, label="control: shuffled labels")
        ax.axhline(res.chance, color="grey", lw=1, ls=(0, (8, 3)), label=f"chance (1/{len(res.classes)})")
        ax.set_title(name)  # the sets are described beside the figure: long titles would collide
        ax.set_ylim(0, 1.03)
        integer_ticks(ax)
    for ax in axes[-1]:
        ax.set_xlabel("evaluated on state $H^{(l)}$ (0: input)")
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out accuracy")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    # above the panels, outside them: constrained layout makes room, so it covers no data
    fig.legend(handles, labels, loc="outside upper center", ncols=2, frameon=False)
    return fig


__all__ = ["paper_style_summary", "probing_results", "probe_figure"]
