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


def family_table(tables: dict[str, str], family: str) -> dict | None:
    """The paper's table for a family (ATTENTION_TABLES or FRONT_TABLES), or None where it has none."""
    return paper_values(tables[family]) if family in tables else None
