"""A chapter's run: one call sets it up from the notebook's parameters, one call finishes it.

    # the parameters cell (papermill overrides it) ...
    run = setup("01_representations", globals())   # typed parameters, model, samples, page header
    ...                                            # the chapter's analysis, figures, tables
    run.finish({"avg_sim": ...}, points)           # the results file, the verdicts, "What this run shows"

`setup` reads the chapter's parameters from the notebook's namespace (every plain value not starting
with an underscore: the parameters cell is the first cell, so they are all there is), checks their
types, loads the model and the samples, lets the chapter's spec derive what it needs (`prepare`), and
shows the model banner and the parameters. `finish` writes the results file atomically, with the run's
provenance (`run_info`) and the verdicts of the claims the chapter answers (`vlmlib.paper.findings`),
then shows the conclusion. Parameters are written once, in the parameters cell.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..data import load_samples
from ..models import LoadedModel, load_model
from ..obscache import observe_cached
from ..params import as_int
from ..util import write_json
from .chapters import chapter_spec, shared_readings
from .figures import use_book_style
from .findings import chapter_findings
from .page import show_conclusion, show_header, verdict_points
from .spec import ChapterSpec
from .values import family_values

# Lower bounds of the integer parameters the chapters share (the runner checks them before running).
MINIMUMS = {"n_samples": 1, "seed": 0, "batch_size": 1, "max_rows": 1, "folds": 2, "train_last": 1}
# How the model is loaded and the prompt made: recorded under "prompt" and "model", not "params".
LOADING = ("model", "device", "dtype", "system_prompt", "task_prefix", "max_pixels")
PLUMBING = ("results",)  # where the results go: not a parameter of the analysis
_NOT_PARAMETERS = {"In", "Out", "get_ipython", "exit", "quit", "open"}  # IPython's own names
_PLAIN = (str, int, float, bool, list, tuple, dict, type(None))


def notebook_parameters(namespace: Mapping) -> dict:
    """The parameters in a notebook's namespace: plain values (numbers, text, lists, dicts, None) whose
    names are lower case and do not start with an underscore, in the order the parameters cell gives them
    (an imported CONSTANT is not a parameter; call `setup` before assigning anything else)."""
    return {
        k: v
        for k, v in namespace.items()
        if not k.startswith("_") and k not in _NOT_PARAMETERS and not k.isupper() and isinstance(v, _PLAIN)
    }


@dataclass
class ChapterRun:
    spec: ChapterSpec
    params: dict  # the parameters, typed (and derived values the spec's `prepare` adds)
    lm: LoadedModel
    samples: list
    extra: dict = field(default_factory=dict)  # what `prepare` derives besides parameters (groups, tables)

    @property
    def chapter(self) -> str:
        return self.spec.chapter

    def observe(self, readings, **kwargs):
        """The observation pass over the run's samples: `readings` served from the one pass the book's
        observation chapters share (cached on disk when the runner gives a cache, `vlmlib.obscache`)."""
        return observe_cached(
            self.lm,
            self.samples,
            readings=readings,
            batch_size=self.params["batch_size"],
            key_extra={"dataset": self.params["dataset"], "seed": self.params["seed"]},
            shared=shared_readings(),
            **kwargs,
        )

    def paper_values(self, name: str) -> dict:
        """The paper's values of one analysis for this run's family ({} where it reports none)."""
        return family_values(name, self.lm.family.name)

    def shown_parameters(self) -> dict:
        """The parameters the page's header shows (model and results path are elsewhere)."""
        return {
            k: v
            for k, v in self.params.items()
            if k not in ("model", "system_prompt", "task_prefix", "max_pixels", *PLUMBING)
        }

    def recorded_parameters(self) -> dict:
        """The parameters the results file records under "params" (loading settings are recorded apart)."""
        params = {k: v for k, v in self.params.items() if k not in (*LOADING, *PLUMBING)}
        return {**params, "n_samples": len(self.samples)}

    def run_info(self) -> dict:
        return run_info(self.lm, self.samples, **self.recorded_parameters())

    def finish(self, results: dict, points: list[str]) -> None:
        """Write the results file (provenance, the chapter's numbers, the verdicts of its claims), then show
        "What this run shows": `points`, an untrained-model note where it applies, and the verdicts."""
        record = {**self.run_info(), "chapter": self.chapter, **results}
        record["findings"] = chapter_findings(record, self.spec)
        path = write_json(self.params["results"], record)
        if not self.lm.trained:
            points = [*points, self.spec.untrained_note]
        show_conclusion(points + verdict_points(path))  # returns nothing: a notebook shows no path


def run_info(lm, samples=None, **params) -> dict:
    """The header every results file starts with: the model, how its prompts and images were prepared,
    the parameters, and which images the run used (ids and pixel hashes, so a run can be repeated)."""
    from ..data.pixelprose import samples_provenance

    info = {
        "model": lm.name,
        "family": lm.family.name,
        "trained": lm.trained,
        "description": lm.description,
        "num_layers": lm.num_layers,
        "num_vision_layers": lm.num_vision_layers,
        # what "auto" resolved to: a float16 run's numbers differ from a float32 run's
        "dtype": str(lm.model.dtype).removeprefix("torch."),
        "device": lm.device.type,
        "prompt": lm.prompt_settings(),
        "params": params,
    }
    if samples is not None:
        info["samples"] = samples_provenance(samples)
        report = getattr(samples, "report", None)  # PixelProse: what was skipped and why
        if report is not None:
            info["sample_report"] = report.as_dict()
    return info


def setup(chapter: str | ChapterSpec, namespace: Mapping) -> ChapterRun:
    """Everything before a chapter's analysis: typed parameters, the model, the samples, the page header.
    `chapter` names a chapter of the book (its spec is in `vlmlib.paper.chapters`) or is a spec itself
    (a chapter defined outside the package)."""
    spec = chapter if isinstance(chapter, ChapterSpec) else chapter_spec(chapter)
    params = notebook_parameters(namespace)
    for name, minimum in MINIMUMS.items():
        if name in params:
            params[name] = as_int(params[name], name, minimum=minimum)
    use_book_style()
    lm = load_model(
        params["model"],
        device=params.get("device", "auto"),
        dtype=params.get("dtype", "auto"),
        system_prompt=params.get("system_prompt"),
        task_prefix=params.get("task_prefix", ""),
        max_pixels=params.get("max_pixels"),
    )
    load = spec.load_samples or load_samples
    samples = load(params["dataset"], params["n_samples"], seed=params["seed"])
    run = ChapterRun(spec, params, lm, samples)
    if spec.prepare is not None:
        spec.prepare(run)
    show_header(lm, run.shown_parameters(), n_used=len(samples))
    return run


__all__ = ["ChapterRun", "setup", "run_info", "notebook_parameters", "MINIMUMS"]
