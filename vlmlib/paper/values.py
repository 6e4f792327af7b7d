"""The paper's reported numbers, transcribed once into vlmlib/paper/values/<name>.json, and which of them
belong to which family's model."""

from __future__ import annotations

import json
from pathlib import Path

VALUES_DIR = Path(__file__).parent / "values"
# The paper's patching tables, by family (it reports them for PaliGemma-3B and Qwen2-VL-2B only).
ATTENTION_TABLES = {
    "paligemma": "table1_paligemma_attention_patching",
    "qwen2vl": "table2_qwen2vl_attention_patching",
}
FRONT_TABLES = {"paligemma": "table3_paligemma_front_patching", "qwen2vl": "table4_qwen2vl_front_patching"}


def paper_values(name: str) -> dict:
    """The paper's reported numbers for one analysis (vlmlib/paper/values/<name>.json)."""
    path = VALUES_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in VALUES_DIR.glob("*.json"))
        raise KeyError(f"no transcribed paper values named {name!r}; known: {known}")
    return json.loads(path.read_text())


def family_values(name: str, family: str) -> dict:
    """The paper's values of one analysis for one family's model ({} where it reports none)."""
    return paper_values(name).get(family) or {}


# The fewest image tokens the paper's model of a family saw: PaliGemma-3B at 224 px has 256 (at 448 px
# 1024). Qwen2-VL's count follows the image size, which the paper does not give: no bound.
MIN_IMAGE_TOKENS = {"paligemma": 256}


def impossible_quadrants(values: dict, family: str) -> dict[str, str]:
    """Appendix C block means that cannot be what the paper says they are, {block: why}. A head-averaged
    block mean over vision keys is at most 1 / (number of vision keys): each query's weights sum to 1, so
    even a query that attends only to the image spreads 1 over at least that many keys."""
    n = MIN_IMAGE_TOKENS.get(family)
    if n is None:
        return {}
    return {
        block: f"a mean weight over at least {n} vision keys is at most 1/{n} = {1 / n:.4f}; "
        f"{values[block]:g} cannot be a block mean"
        for block in ("vv", "tv")
        if isinstance(values.get(block), (int, float)) and values[block] > 1 / n + 1e-9
    }


def family_table(tables: dict[str, str], family: str) -> dict | None:
    """The paper's table for a family (ATTENTION_TABLES or FRONT_TABLES), or None where it has none."""
    return paper_values(tables[family]) if family in tables else None
