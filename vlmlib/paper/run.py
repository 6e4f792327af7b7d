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

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..data import load_samples
from ..data.samples import MIN_IMAGE_SIZE, QUESTION, check_image_size, check_question, with_question
from ..models import LoadedModel, load_model
from ..obscache import observe_cached
from ..params import ParameterError, as_int
from ..util import write_json
from .chapters import chapter_spec, shared_readings
from .figures import caption_band, check_band, use_book_style
from .findings import chapter_findings
from .page import glue_conclusion, show_conclusion, show_header, verdict_points
from .spec import ChapterSpec
from .values import family_values

# Lower bounds of the integer parameters the chapters share (the runner checks them before running).
MINIMUMS = {
    "n_samples": 1,
    "seed": 0,
    "batch_size": 1,
    "max_rows": 1,
    "folds": 2,
    "train_last": 1,
    "image_size": MIN_IMAGE_SIZE,  # or None
}
# Parameters of the task every chapter shares: None leaves the choice to the dataset and the model.
#   question    what every prompt asks (None: the dataset's own, a folder's `question` column, else the
#               paper's counting question); an answer to another question is dropped (`with_question`)
#   image_size  the side in pixels of the images (None: what the model expects, `native_image_size`)
TASK_PARAMETERS = ("question", "image_size")
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

    @property
    def task(self) -> dict:
        """What the run asked and how its answers are scored (`task_of`)."""
        return task_of(self.lm, self.samples)

    def finish(self, results: dict, points: list[str], above: bool = False) -> None:
        """Write the results file (provenance, the chapter's numbers, the verdicts of its claims), then show
        "What this run shows": `points`, an untrained-model note where it applies, and the verdicts. With
        `above`, nothing is shown here: the conclusion (prose, at most five sentences, then the verdicts)
        goes to the page's `{glue:md}` "conclusion" near its top, and the first point to "result", the
        opening sentence of the main figure's caption (`page.glue_conclusion`)."""
        record = {**self.run_info(), "chapter": self.chapter, **results}
        record["findings"] = chapter_findings(record, self.spec)
        path = write_json(self.params["results"], record)
        if above:
            glue_conclusion(points, record["findings"], None if self.lm.trained else self.spec.untrained_note)
            return
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
        info["task"] = task_of(lm, samples)
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
        if name in params and not (name in TASK_PARAMETERS and params[name] is None):
            params[name] = as_int(params[name], name, minimum=minimum)
    if "image_size" in params:
        params["image_size"] = check_image_size(params["image_size"])
    if params.get("question") is not None:
        params["question"] = check_question(params["question"])
    if "band" in params:
        params["band"] = check_band(params["band"])
    use_book_style()
    lm = load_model(
        params["model"],
        device=params.get("device", "auto"),
        dtype=params.get("dtype", "auto"),
        system_prompt=params.get("system_prompt"),
        task_prefix=params.get("task_prefix", ""),
        max_pixels=params.get("max_pixels"),
    )
    samples = chapter_samples(spec, lm, params)
    if "band" in params:
        caption_band(params["band"])
    run = ChapterRun(spec, params, lm, samples)
    if spec.prepare is not None:
        spec.prepare(run)
    show_header(lm, run.shown_parameters(), n_used=len(samples), note=task_warning(spec, run.task))
    return run


def chapter_samples(spec: ChapterSpec, lm, params: dict) -> list:
    """The chapter's samples: drawn (synthetic sets) or resized (photographs) at `image_size`, the size
    the model expects when it is None (then written back into `params`, so that the page and the results
    file show the size used), asking `question` where it is given."""
    load = spec.load_samples or load_samples
    given = params.get("image_size")
    size = given if given is not None else lm.native_image_size()
    question = params.get("question")
    accepted = inspect.signature(load).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    kwargs = {"seed": params["seed"]}
    if "image_size" in accepted or takes_any:
        kwargs["image_size"] = size
        if "image_size" in params:
            params["image_size"] = size
    elif given is not None:
        raise ParameterError(
            f"parameter 'image_size': chapter {spec.chapter}'s samples are drawn by its own loader, which "
            "takes no image size; leave image_size = None"
        )
    if "question" in accepted or takes_any:
        kwargs["question"] = question
        return load(params["dataset"], params["n_samples"], **kwargs)
    return with_question(load(params["dataset"], params["n_samples"], **kwargs), question)


def task_of(lm, samples) -> dict:
    """What a run asked and how its answers were scored: the distinct questions (the first five), whether
    the task is the paper's (its counting question, "How many objects are in the image?"), how many
    samples have an answer, and the most tokens an answer has in the checkpoint's tokenizer (answers are
    scored whole: `vlmlib.interventions.patching`, `vlmlib.interventions.knockout`)."""
    questions = list(dict.fromkeys(getattr(s, "question", QUESTION) for s in samples))
    answers = [s.answer for s in samples if getattr(s, "answer", None) not in (None, "")]
    lengths = []
    for answer in dict.fromkeys(answers):
        try:
            lengths.append(len(lm.answer_token_ids(answer)))
        except ValueError:
            lengths.append(0)
    return {
        "questions": questions[:5],
        "n_questions": len(questions),
        "paper_task": questions == [QUESTION],
        "answers": len(answers),
        "answer_tokens": max(lengths, default=0),
    }


def task_warning(spec: ChapterSpec, task: dict) -> str | None:
    """A note for the page's header when the run's task is not the paper's (None when it is): which
    comparisons with the paper do not apply, and why (`vlmlib.paper.claims.other_task_reason`)."""
    if task.get("paper_task", True):
        return None
    from .claims import other_task_reason

    asked = other_task_reason(task, short=True)
    dependent = [c for c in spec.claims if c.task_dependent]
    if spec.claims and not dependent:
        verdict = (
            "The claim this chapter tests is about how image tokens are processed, not about the answer: "
            "its comparison with the paper still applies, with that difference in mind."
        )
    elif spec.claims:
        verdict = (
            "The paper's numbers shown beside ours were measured on its counting question: they are not "
            "comparable with this run, and its verdicts say *not comparable*."
        )
    else:
        verdict = "The paper's numbers, where shown, were measured on its counting question."
    scored = (
        f" Answers of up to {task['answer_tokens']} tokens are scored whole (teacher-forced: the "
        "log-probability of every token, correct when greedy decoding gives the whole answer)."
        if task.get("answer_tokens", 0) > 1
        else ""
    )
    return f"> **Not the paper's task.** {asked}. {verdict}{scored}"


__all__ = [
    "ChapterRun",
    "setup",
    "run_info",
    "notebook_parameters",
    "chapter_samples",
    "task_of",
    "task_warning",
    "MINIMUMS",
    "TASK_PARAMETERS",
]
