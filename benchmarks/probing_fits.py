"""What chapter 5's probes cost: scikit-learn's fit and score against vlmlib's, one table.

    nice -n 5 .venv/bin/python benchmarks/probing_fits.py [--features feats.npz ...] [--repeats 3]

Features: .npz files holding chapter 5's feature sets (n, states, d) and `labels`, e.g. saved by
`np.savez(path, labels=np.array(probe_labels(samples)), **pooled_features(lm, samples))`; without
them, random features of the chapter's shape (300 samples, 9 states, 128 dimensions, 6 classes).
Rows (before, after), medians of `--repeats` interleaved runs, on one BLAS thread as the probes run:

- one fit: LogisticRegression(max_iter=300).fit, then `fit_logistic`, over the fits of one fold
  (true and shuffled labels on every state), with how many coefficient sets are bit for bit equal;
- one score: LogisticRegression.score, then `probe_accuracy`, on the held-out split;
- one feature set of chapter 5: two `cross_layer_probes` calls (one per scaling, the second without
  controls, as the chapter ran before), then one `probes_by_scaling` call; both fit with
  `fit_logistic`, so this row is what sharing the fits saves.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlmlib.probing import (  # noqa: E402
    DEFAULT_FEATURE_SETS,
    cross_layer_probes,
    fit_logistic,
    last_layers,
    probe_accuracy,
    probes_by_scaling,
)


def random_features(n=300, states=9, d=128, classes=6, seed=0):
    """Class centres that grow over the states: from chance on the first to easy on the last."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    signal = np.linspace(0, 0.5, states)[None, :, None] * rng.normal(size=(classes, d))[y][:, None]
    return {"random": rng.normal(size=(n, states, d)) + signal}, [f"c{k}" for k in y]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", nargs="*", type=Path, default=[])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", ConvergenceWarning)
    sources = {p.stem: np.load(p) for p in args.features}
    print(f"{'features':20s} {'step':38s} {'before':>9s} {'after':>9s} {'speed-up':>9s}  same numbers")
    for source, data in (sources or {"random": None}).items():
        if data is None:
            feats, labels = random_features()
        else:
            feats, labels = (
                {k: data[k] for k in DEFAULT_FEATURE_SETS if k in data.files},
                list(data["labels"]),
            )
        name, X = next(iter(feats.items()))
        X = X.astype(np.float64)  # as cross_layer_probes does; scikit-learn would fit float32 in float32
        classes, y = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
        shuffled = np.random.default_rng(0).permutation(y)
        tr, te = next(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
        problems = []
        for e in range(X.shape[1]):
            scaler = StandardScaler().fit(X[tr, e])
            problems += [(scaler.transform(X[tr, e]), scaler.transform(X[te, e]), t) for t in (y, shuffled)]
        with threadpool_limits(1):  # as the probes run; the rows are timed inside too
            theirs = [LogisticRegression(max_iter=300).fit(Z, t[tr]) for Z, _, t in problems]
            ours = [fit_logistic(Z, t[tr]) for Z, _, t in problems]
            equal = sum(
                np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_)
                for a, b in zip(theirs, ours)
            )
            rows = [
                (
                    f"one fit ({len(problems)} fits, ms)",
                    1e3 / len(problems),
                    lambda: [LogisticRegression(max_iter=300).fit(Z, t[tr]) for Z, _, t in problems],
                    lambda: [fit_logistic(Z, t[tr]) for Z, _, t in problems],
                    f"{equal}/{len(problems)} coefs",
                ),
                (
                    f"one score ({len(problems)} scores, us)",
                    1e6 / len(problems),
                    lambda: [p.score(Zte, t[te]) for p, (_, Zte, t) in zip(theirs, problems)],
                    lambda: [probe_accuracy(p, Zte, t[te]) for p, (_, Zte, t) in zip(theirs, problems)],
                    str(
                        all(
                            p.score(Zte, t[te]) == probe_accuracy(p, Zte, t[te])
                            for p, (_, Zte, t) in zip(theirs, problems)
                        )
                    ),
                ),
            ]
            train_layers = last_layers(X.shape[1])

            def two_calls():
                return (
                    cross_layer_probes(X, labels, train_layers=train_layers),
                    cross_layer_probes(
                        X, labels, train_layers=train_layers, scaling="per_layer", controls=False
                    ),
                )

            def one_call():
                return probes_by_scaling(X, labels, train_layers=train_layers)

            same = all(np.array_equal(b.accuracy, one_call()[b.scaling].accuracy) for b in two_calls())
            rows.append((f"'{name}', two calls -> one (s)", 1.0, two_calls, one_call, str(same)))
            for label, unit, slow, fast, check in rows:
                pairs = [
                    (timed(slow), timed(fast)) for _ in range(args.repeats)
                ]  # interleaved: load hits both
                slow_t, fast_t = (statistics.median(t[i] for t in pairs) * unit for i in (0, 1))
                print(
                    f"{source:20s} {label:38s} {slow_t:9.2f} {fast_t:9.2f} {slow_t / fast_t:8.2f}x  {check}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
