# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Attention-output activation patching
#
# *Paper section 2.2, Table 1 (PaliGemma-3B); Appendix D, Table 2 (Qwen2-VL-2B).*

# %% tags=["parameters", "remove-cell"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 200
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "03_attention_patching.json"  # where this chapter writes its numbers
groups = "scaled"  # layer groups: "scaled" (paper's indices at 18 layers, scaled by depth), "paper", or a dict
directions = ["early->mid", "late->mid", "early->late", "mid->late", "early->final", "mid->final"]
positions = ["vision", "text"]  # decoder position sets to patch
target = "auto"  # target token: "answer", "top1", or "auto" (answer when the dataset has one)
max_rows = 32  # rows per patched forward pass (batch x configurations stacked); raise it on a GPU

# %% tags=["remove-input"]
import matplotlib.pyplot as plt

from vlmlib.data import load_samples
from vlmlib.groups import describe_groups, layer_groups
from vlmlib.models import load_model
from vlmlib.patching import (attention_patches, compare_with_paper, delta_figure, markdown_table, paper_markdown,
                             patch_experiment)
from vlmlib.plots import use_book_style
from vlmlib.report import paper_values, run_info, show_conclusion, show_header, show_markdown, write_results

use_book_style()
lm = load_model(model, device=device, dtype=dtype)
samples = load_samples(dataset, n_samples, seed=seed)
layer_group = layer_groups(lm.num_layers, groups)
paper_table = {"paligemma": "table1_paligemma_attention_patching",
               "qwen2vl": "table2_qwen2vl_attention_patching"}.get(lm.family.name)
paper = paper_values(paper_table) if paper_table else None
show_header(lm, dict(dataset=dataset, n_samples=n_samples, seed=seed, batch_size=batch_size, device=device,
                     dtype=dtype, groups=groups, directions=directions, positions=positions, target=target),
            n_used=len(samples))

# %% [markdown]
# **Learning objectives.** After this chapter you can (1) run an activation-patching experiment: record
# an activation in a clean run and write it into another run, (2) read a patching table (clean,
# patched, their difference and its spread), and (3) explain why the sign of a raw logit shift is a weak
# basis for comparing a saturated model with the paper's.
#
# **Question.** Does the model need what attention computes in a given layer, or can an earlier (or
# later) layer's attention output stand in for it? And does that differ between the image tokens and the
# text tokens?
#
# **Method: activation patching.** We run every sample twice.
#
# 1. *Clean run*: the model reads the image and the question unchanged; we record the attention output
#    of the **source** layers, exactly what attention adds to the residual stream
#    ($\Delta_{\text{Attn}}^{(l)}$ of Appendix F.2).
# 2. *Patched run*: the same input, but at each **target** layer the attention output is replaced by the
#    recorded one of its paired source layer (sources and targets paired in order: the first source onto
#    the first target, and so on), only at one set of positions: the image tokens (*vision*) or the
#    text tokens (*text*, the final position included). The MLPs and every other position compute as
#    usual on the changed residual stream.
#
# We then read the logit of the **target token** at the final position, its cross-entropy loss
# ($-\log p(\text{target})$) and whether it is the top-1 prediction, in both runs. If the patched logit
# barely moves, the target layers' attention at those positions was replaceable by the source layers';
# a large drop means the target layers compute something the source layers did not.
#
# **Implementation.** `vlmlib.patching` hooks the sites through `vlmlib.trace.Trace`. All
# configurations run in one forward pass per batch where memory allows: the batch is repeated once per
# configuration along the batch dimension and block $k$ receives configuration $k$'s patch. The tests
# check that patching a site with its own clean activation gives back the clean logits, that positions
# outside the set and every layer before the first target are untouched, that stacked configurations
# equal one-at-a-time runs, and that an nnsight implementation gives the same logits.
#
# **How we read the paper.**
# - *Direction*: "Early → Mid" means sources early, targets mid: the early layers' attention output is
#   written over the mid layers'. The paper's own reading of its result ("earlier visual features
#   overwrite later representations") confirms this order.
# - *Layer numbers*: 0-based module indices (`layers[2]` is "layer 2"): early 2-4, mid 5-7, late 10-12
#   of PaliGemma's 18-layer decoder. Section 2.2 also says the outputs are fed "into the self-attention
#   outputs of the final 3 layers", yet Table 1 has targets *Mid* and *Late*. We read *Late* as 10-12
#   (the group the same sentence defines), and add two rows the table does not have, early → final
#   and mid → final (final = the last three layers), for the other reading.
# - *Vision / Text*: decoder positions of image tokens / of text tokens. Appendix D.2 discusses
#   Qwen2-VL's "Vision" rows as attention of the vision encoder, but says the configuration is the same
#   as PaliGemma's; we patch the decoder at vision positions for both families.
# - *Target token*: the paper's "target token" is the ground-truth answer (its clean losses of ~15-20
#   nats show the answer token is not the model's top prediction). We use the dataset's answer when it
#   has one, else the clean run's top-1 token.
#
# **Paper's finding (PaliGemma).** Vision positions: early → mid and late → mid barely move the target
# logit, early → late and mid → late lower it by about 0.27. Text positions: early → mid and early → late
# *raise* it by about 6 and lower the loss; late → mid lowers it. Qwen2-VL (Table 2): all shifts within
# about ±1.4, the largest drop text early → late (-1.41).


# %% tags=["remove-input"]
show_markdown("**Layer groups used:** " + describe_groups(layer_group, lm.num_layers) + f" (mode `{groups}`).")

# %% [markdown]
# ## The paper's table
#
# As transcribed from the paper (means over 100-200 PixelProse images; no spread reported).

# %% tags=["remove-input"]
if paper:
    show_markdown(f"**{paper['source']}**, {paper['model']}\n\n" + paper_markdown(paper))
else:
    show_markdown(f"The paper reports no attention-patching table for the {lm.family.name} family.")

# %% [markdown]
# ## Our run
#
# Every row: mean ± one standard error of the mean over samples (for top-1 accuracy, the standard error
# of a proportion). Δ is the per-sample difference patched − clean, averaged; its standard error is that
# of the paired differences. The paper's values for the same family and configuration stand beside ours.

# %% tags=["hide-input"]
patches = attention_patches(layer_group, directions, positions)
result = patch_experiment(lm, samples, patches, batch_size=batch_size, target=target, max_rows=max_rows)
rows = result.rows()
show_markdown(f"Target token: {'the dataset answer' if result.target == 'answer' else 'the clean run top-1 token'}; "
              f"{len(patches)} configurations × {result.n_samples} samples.\n\n" + markdown_table(rows, paper))

# %% tags=["hide-input"]
fig = delta_figure(rows, paper, title=lm.name)
plt.show()

# %% [markdown]
# ## What this run shows

# %% tags=["remove-input"]
comparison = compare_with_paper(rows, paper)
biggest = max(rows, key=lambda r: abs(r["delta"]))
lines = [f"Largest shift: {biggest['positions']} positions, {biggest['label']} "
         f"(Δ logit {biggest['delta']:+.3f} ± {biggest['delta_se']:.3f}, patched top-1 accuracy "
         f"{biggest['patched_acc']:.2f} vs clean {biggest['clean_acc']:.2f})."]
for pos in positions:
    mean_abs = sum(abs(r["delta"]) for r in rows if r["positions"] == pos) / max(1, sum(r["positions"] == pos for r in rows))
    lines.append(f"{pos} positions: mean |Δ logit| {mean_abs:.3f} over {len(directions)} directions.")
if comparison:
    resolved = [c for c in comparison if c["resolved"]]
    agree = [c for c in resolved if c["same_sign"]]
    lines.append(f"Against the paper's {len(comparison)} rows: {len(resolved)} of our shifts are larger than two "
                 f"standard errors; of these, {len(agree)} have the paper's sign "
                 f"({'; '.join(c['modality'] + ' ' + c['patch'] for c in agree) or 'none'}).")
if not lm.trained:
    lines.append("The weights are random: these numbers show the method at work, not a finding.")
show_conclusion(lines)

# %% tags=["remove-cell"]
write_results(results, {
    **run_info(lm, dataset=dataset, n_samples=len(samples), batch_size=batch_size, seed=seed, groups=groups,
               directions=directions, positions=positions, target=target),
    "chapter": "03_attention_patching",
    "layer_groups": layer_group,
    "layer_note": "0-based module indices; 'A->B' = sources A written over targets B, paired in order",
    "target": result.target,
    "seconds": result.seconds,
    "rows": rows,
    "comparison": comparison,
    "paper": paper_table,
});
