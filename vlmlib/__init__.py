"""vlmlib: hooks, readings and interventions for studying how vision-language models bring images into
their language stream.

    from vlmlib import load_model, load_samples, Trace, observe
    lm = load_model("qwen2vl-shapes")                       # a named model, a local folder or a hub id
    samples = load_samples("shapes", 16)
    with Trace(lm, ["resid.3", "attn.3"]) as tr:             # record (or edit) sites of a forward pass
        lm.forward(lm.encode_samples(samples))
    obs = observe(lm, samples)                               # every layer's readings in one pass

The package is three floors and a side wing, imports only downward: this library (models and
families, trace, observation, interventions, probing, data, statistics) knows nothing of the paper
or the book; `vlmlib.paper` (claims and rules, the paper's values, chapter specs, tables and figures)
uses it; `vlmlib.book` (the runner, generated pages, the command line) uses both; `vlmlib.organisms`
(builders, the training recipe, the shipped weights) uses the library only.

Importing the package imports nothing heavy: the names below load their module on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    # models and families
    "load_model": "models",
    "LoadedModel": "models",
    "ModelLoadError": "models",
    "NamedModel": "models",
    "named_models": "models",
    "register_model": "models",
    "wrap_model": "models",
    "Family": "families",
    "PromptOptions": "families",
    "UnsupportedModelError": "families",
    "family_for_config": "families",
    "register_family": "families",
    # data
    "Sample": "data",
    "DatasetError": "data",
    "load_samples": "data",
    "shapes_samples": "data",
    "imagefolder_samples": "data",
    # reading a forward pass
    "Trace": "trace",
    "site": "trace",
    "observe": "observation",
    "observe_batch": "observation",
    "Observation": "observation",
    "Moments": "observation",
    "attention_pattern": "observation",
    "observe_cached": "obscache",
    # interventions
    "Patch": "interventions.patching",
    "patch_experiment": "interventions.patching",
    "check_patches": "interventions.patching",
    "attention_patches": "interventions.patching",
    "front_patches": "interventions.patching",
    "run_clean": "interventions.resume",
    "final_logits": "interventions.resume",
    "Knockout": "interventions.knockout",
    "knockout_experiment": "interventions.knockout",
    "layer_sweep": "interventions.knockout",
    "critical_layers": "interventions.knockout",
    "counterfactual_experiment": "interventions.counterfactual",
    "counterfactual_patches": "interventions.counterfactual",
    "CounterfactualResult": "interventions.counterfactual",
    # the logit lens
    "logit_lens": "lens",
    "LensResult": "lens",
    "fit_tuned_lens": "lens",
    # probing
    "pooled_features": "probing",
    "cross_layer_probes": "probing",
    "probes_by_scaling": "probing",
    "ProbeResult": "probing",
    # statistics and layer sets
    "mean_se": "stats",
    "paired_p_value": "stats",
    "holm": "stats",
    "GroupError": "layers",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vlmlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted([*globals(), *__all__])
