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
# # 7. Front patching: earlier layers in place of the last three
#
# *Paper Appendix E, Table 3 (PaliGemma-3B) and Table 4 (Qwen2-VL-2B).*

# %% tags=["parameters", "remove-cell"]
model = "paligemma-shapes"  # embedded model name, local folder, or hub id
dataset = "shapes"  # "shapes", "pixelprose", or a local imagefolder path
n_samples = 200
batch_size = 16
device = "auto"
dtype = "auto"
seed = 0
results = "07_front_patching.json"  # where this chapter writes its numbers
groups = "scaled"  # decoder groups: "scaled" (paper's indices at 18 layers, scaled by depth), "paper", or a dict
vision_groups = "scaled"  # vision-tower groups, same choices (scaled by the tower's depth)
sources = ["2-4", "5-7", "7-9", "10-12"]  # source groups, by the paper's names; targets: "final"
decoder_positions = ["text", "vision"]  # "text" is the paper's; "vision" goes beyond it
target = "auto"  # target token: "answer", "top1", or "auto" (answer when the dataset has one)
max_rows = 32  # rows per patched forward pass (batch x configurations stacked); raise it on a GPU

# %% tags=["remove-input"]
import matplotlib.pyplot as plt
import numpy as np

from vlmlib.data import load_samples
from vlmlib.groups import describe_groups, front_groups
from vlmlib.models import load_model
from vlmlib.patching import (Patch, compare_with_paper, delta_figure, front_patches, markdown_table, modality_name,
                             paper_markdown, patch_experiment)
from vlmlib.plots import use_book_style
from vlmlib.report import paper_values, run_info, show_conclusion, show_header, show_markdown, write_results

use_book_style()
lm = load_model(model, device=device, dtype=dtype)
samples = load_samples(dataset, n_samples, seed=seed)
decoder_group = front_groups(lm.num_layers, groups)
vision_group = front_groups(lm.num_vision_layers, vision_groups)
paper_table = {"paligemma": "table3_paligemma_front_patching",
               "qwen2vl": "table4_qwen2vl_front_patching"}.get(lm.family.name)
paper = paper_values(paper_table) if paper_table else None
show_header(lm, dict(dataset=dataset, n_samples=n_samples, seed=seed, batch_size=batch_size, device=device,
                     dtype=dtype, groups=groups, vision_groups=vision_groups, sources=sources,
                     decoder_positions=decoder_positions, target=target), n_used=len(samples))

# %% [markdown]
# **Learning objectives.** After this chapter you can (1) patch whole residual states, not just one
# sublayer's output, (2) reason about which patched pairs can still matter downstream (and check it),
# and (3) compare how sensitive the decoder and the vision tower are to depth.
#
# **Question.** Can the last layers be skipped? If the states an earlier layer produced are written
# over the last three layers' outputs, does the model still find its answer? The paper asks it of the
# language decoder at text positions and of the vision tower, and finds an asymmetry: text states are
# not interchangeable across depth, vision states largely are.
#
# **Method.** The same two-run patching as in chapter 3, on whole layer outputs instead of attention
# outputs:
#
# - *Decoder, text positions (the paper's "Text")*: the outputs $H^{(l+1)}$ of the source decoder layers,
#   recorded in a clean run, are written over the outputs of the last three decoder layers at the text
#   positions, paired in order (the first source onto the third-to-last layer, ...).
# - *Vision tower (the paper's "Vision")*: the outputs of source vision-encoder layers are written over
#   the tower's own last three layers, at every patch (the tower holds only image patches; for Qwen2-VL
#   these are its packed patches, before the 2x2 merge). The projector then reads the patched tower.
# - *Decoder, vision positions (beyond the paper)*: as the first, at the image-token positions.
#
# We read the target token's logit and cross-entropy loss at the final position, and its top-1
# accuracy, clean and patched.
#
# **What a front patch reduces to.** Writing a whole layer output replaces everything computed before
# it at those positions. For the decoder at text positions, the final position's last-layer output is
# overwritten by the clean output of the *last* source layer, so the patched prediction is the model's
# own unembedding (final norm + LM head) applied to that earlier state, a logit lens: the other pairs
# cannot matter. For the vision tower the same holds: the tower ends with the last source layer's clean
# state. We check this below by running the last pair alone. At vision positions in the decoder it does
# not hold: the patched states are read by the final token's attention in the last layers.
#
# **How we read the paper.**
# - *Layer numbers*: 0-based module indices; the source groups 2-4, 5-7, 7-9, 10-12 and the last three
#   layers (15-17) of PaliGemma's 18-layer decoder. (E.1.1 names 2-4, 7-9 "mid" and 10-12; Table 3
#   also has 5-7: we run all four.) The paper applies the same literal groups to Qwen2-VL's 28-layer
#   decoder and to both vision towers (SigLIP 27 layers, Qwen2-VL's ViT 32 blocks); by default we scale
#   the groups by depth (identical at 18 layers), `groups="paper"` takes them literally.
# - *Target token*: the ground-truth answer (the dataset's answer when it has one, else the clean top-1).
#
# **Paper's finding.** PaliGemma: text front patching collapses the target logit (12.8 to about 0-3,
# loss up to 24-33); vision-tower front patching lowers it by 0.3-1.0 and even lowers the loss.
# Qwen2-VL: text patching collapses the logit to about 1-2.3; vision-tower patching moves it by at most
# +0.65 (2-4), otherwise by about -0.3.


# %% tags=["remove-input"]
show_markdown("**Layer groups used:** " + describe_groups(decoder_group, lm.num_layers) + f" (mode `{groups}`); "
              + describe_groups(vision_group, lm.num_vision_layers, "vision tower") + f" (mode `{vision_groups}`).")

# %% [markdown]
# ## The paper's table
#
# As transcribed from the paper (means over 100-200 PixelProse images; no spread reported).

# %% tags=["remove-input"]
if paper:
    show_markdown(f"**{paper['source']}**, {paper['model']}\n\n" + paper_markdown(paper))
else:
    show_markdown(f"The paper reports no front-patching table for the {lm.family.name} family.")

# %% [markdown]
# ## Our run
#
# Mean ± one standard error over samples; Δ is the mean of per-sample differences with its paired
# standard error. The paper's values for the same family stand beside ours ("Vision" = vision tower,
# "Text" = decoder at text positions).

# %% tags=["hide-input"]
patches = front_patches(vision_group, sources, "vision")
for pos in decoder_positions:
    patches += front_patches(decoder_group, sources, "resid", pos)
result = patch_experiment(lm, samples, patches, batch_size=batch_size, target=target, max_rows=max_rows)
rows = result.rows()
show_markdown(f"Target token: {'the dataset answer' if result.target == 'answer' else 'the clean run top-1 token'}; "
              f"{len(patches)} configurations × {result.n_samples} samples.\n\n" + markdown_table(rows, paper))

# %% tags=["hide-input"]
fig = delta_figure(rows, paper, title=lm.name)
plt.show()

# %% [markdown]
# ## Check: the last pair alone
#
# Where a front patch reduces to its last pair (vision tower; decoder at text positions), running only
# that pair must give the same patched logits. At the decoder's vision positions the earlier pairs
# matter: the last layers' attention reads the patched image states.

# %% tags=["hide-input"]
last_pair = [Patch(p.kind, p.sources[-1:], p.targets[-1:], p.positions, p.label) for p in patches]
alone = patch_experiment(lm, samples, last_pair, batch_size=batch_size, target=target, max_rows=max_rows)
gaps = {}
for k, p in enumerate(patches):
    gaps.setdefault(modality_name(rows[k]), []).append(
        float(np.abs(result.patched_logit[k] - alone.patched_logit[k]).max()))
table = ["| site | largest difference in patched logit, all pairs vs last pair only | expected |", "|---|---|---|"]
for name, gap in gaps.items():
    expected = "need not be 0" if name.endswith("vision positions") else "0"
    table.append(f"| {name} | {max(gap):.2e} | {expected} |")
show_markdown("\n".join(table))

# %% [markdown]
# ## What this run shows

# %% tags=["remove-input"]
comparison = compare_with_paper(rows, paper)
lines = []
for name in dict.fromkeys(modality_name(r) for r in rows):
    group = [r for r in rows if modality_name(r) == name]
    worst = min(group, key=lambda r: r["delta"])
    lines.append(f"{name}: Δ logit from {min(r['delta'] for r in group):+.3f} to {max(r['delta'] for r in group):+.3f}; "
                 f"largest drop with source {worst['label']} ({worst['delta']:+.3f} ± {worst['delta_se']:.3f}, "
                 f"top-1 accuracy {worst['clean_acc']:.2f} → {worst['patched_acc']:.2f}).")
text = [r for r in rows if r["kind"] == "resid" and r["positions"] == "text"]
tower = [r for r in rows if r["kind"] == "vision"]
if text and tower:
    t, v = np.mean([abs(r["delta"]) for r in text]), np.mean([abs(r["delta"]) for r in tower])
    lines.append(f"Modality asymmetry (the paper's E.1.4): mean |Δ logit| {t:.3f} for the decoder at text positions "
                 f"vs {v:.3f} for the vision tower ({'text larger, as in the paper' if t > v else 'not the paper pattern'}).")
if comparison:
    resolved = [c for c in comparison if c["resolved"]]
    agree = [c for c in resolved if c["same_sign"]]
    lines.append(f"Against the paper's {len(comparison)} rows: {len(resolved)} of our shifts are larger than two "
                 f"standard errors; of these, {len(agree)} have the paper's sign.")
if not lm.trained:
    lines.append("The weights are random: these numbers show the method at work, not a finding.")
show_conclusion(lines)

# %% tags=["remove-cell"]
write_results(results, {
    **run_info(lm, dataset=dataset, n_samples=len(samples), batch_size=batch_size, seed=seed, groups=groups,
               vision_groups=vision_groups, sources=sources, decoder_positions=decoder_positions, target=target),
    "chapter": "07_front_patching",
    "layer_groups": {"decoder": decoder_group, "vision_tower": vision_group},
    "layer_note": "0-based module indices; each source group written over the 'final' group, paired in order",
    "target": result.target,
    "seconds": result.seconds,
    "rows": rows,
    "last_pair_gap": {name: max(gap) for name, gap in gaps.items()},
    "comparison": comparison,
    "paper": paper_table,
});
