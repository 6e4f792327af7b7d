"""A chapter added in one file: its spec (a claim with its rule, a side-by-side view) and its notebook.

The notebook is an ordinary Jupytext chapter that calls `setup(SPEC, globals())` with this module's spec
(a chapter outside the package passes its spec; the book's own chapters pass their name). The test
writes the notebook into a project's notebooks/, registers SPEC in the runner's process
(`vlmlib.paper.chapters.register_chapter`), and runs and builds it like any chapter.
"""

from __future__ import annotations

import numpy as np

from vlmlib.paper.claims import FAILS, HOLDS, Claim, get_field
from vlmlib.paper.spec import ChapterSpec, SideBySide

CHAPTER = "09_toy"


def answer_is_readable(results: dict) -> dict:
    """Toy rule: the answer's top-1 accuracy at the final position is above chance (one in six counts)."""
    accuracy = get_field(results, "accuracy")
    verdict = HOLDS if accuracy > 1 / 6 else FAILS
    return {
        "ours": f"top-1 accuracy {accuracy:.0%}",
        "spread": None,
        "verdict": verdict,
        "reason": f"accuracy {accuracy:.0%} against chance 17%",
        "headlines": [],
    }


SPEC = ChapterSpec(
    CHAPTER,
    claims=(
        Claim(
            "toy-readable",
            "toy",
            "The answer is readable",
            "The model answers above chance.",
            CHAPTER,
            answer_is_readable,
            lambda family: "not in the paper",
        ),
    ),
    side_by_side=SideBySide(
        "lines",
        lambda r: (
            {"final-position norm": (np.asarray(get_field(r, "norms"), float), np.zeros(len(r["norms"])))},
            "‖H(l)‖ at the final token",
        ),
        "The final token's state norm per layer (a toy chapter).",
    ),
)

NOTEBOOK = """# %% [markdown]
# # 9. A toy chapter

# %% tags=["parameters"]
model = "paligemma-shapes"
dataset = "shapes"
n_samples = 4
batch_size = 4
device = "cpu"
dtype = "float32"
seed = 0
results = "09_toy.json"

# %%
import torch

from toy_chapter import SPEC
from vlmlib import Trace, final_logits
from vlmlib.paper import setup

run = setup(SPEC, globals())
lm, samples = run.lm, run.samples

# %%
inputs = lm.encode_samples(samples)
sites = [f"resid.{layer}" for layer in range(lm.num_layers)]
with torch.no_grad(), Trace(lm, sites) as tr:
    logits = final_logits(lm, inputs)
last = lm.last_index(inputs)
rows = torch.arange(len(samples))
norms = [float(tr[s][rows, last].norm(dim=-1).mean()) for s in sites]
answers = torch.tensor([lm.token_id(s.answer) for s in samples])
accuracy = float((logits.argmax(-1) == answers).float().mean())

# %% [markdown]
# ## What this run shows

# %%
run.finish({"norms": norms, "accuracy": accuracy}, [f"Top-1 accuracy {accuracy:.0%}."])
"""
