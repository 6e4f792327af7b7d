"""What users type and the messages they get back: lists typed as text, a busy project, small slips."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vlmlib.book.manifest import RunLock
from vlmlib.book.plan import UsageError


def test_the_lock_message_names_the_folder_the_other_run_writes(tmp_path):
    """Two runs into two folders of one project share its lock: the refusal names the folder the running
    one writes, not the folder the refused one asked for."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock = tmp_path / "_build" / "runner" / "lock"
    lock.parent.mkdir(parents=True)
    try:
        lock.write_text(
            json.dumps({"pid": sleeper.pid, "started": "earlier", "writing": str(tmp_path / "book")})
        )
        with pytest.raises(UsageError) as refused:
            with RunLock(lock, label=str(tmp_path / "trial")):
                pass
        message = str(refused.value)
        assert f"is writing into {tmp_path / 'book'}" in message and f"{tmp_path / 'trial'} waits" in message
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(lock, label=str(tmp_path / "trial")):  # its pid is dead: taken over, and recorded
        assert json.loads(lock.read_text())["writing"] == str(tmp_path / "trial")


def test_library_arguments_that_take_names_read_one_string_as_one_name():
    """`directions="early->mid"` is one direction (and "a,b" two), never the letters of the text."""
    from vlmlib import attention_patches, front_patches, layer_sweep

    groups = {"early": (1,), "mid": (3,), "late": (5,), "final": (7,)}
    one = attention_patches(groups, "early->mid", "vision")
    assert [(p.label, p.positions) for p in one] == [("early->mid", "vision")]
    two = attention_patches(groups, "early->mid,late->final", ["vision", "text"])
    assert len(two) == 4
    assert [p.label for p in front_patches({"2-4": (2,), "final": (7,)}, "2-4", kind="resid")] == ["2-4"]
    assert {ko.scheme for ko in layer_sweep(8, "final", schemes="layer")} == {"layer"}


def test_observe_takes_a_reading_named_as_text(lm, samples):
    from vlmlib import observe

    obs = observe(lm, samples[:2], readings="cosine", progress=False)
    assert "decoder.cosine.vision" in obs and "decoder.update.vision" not in obs
