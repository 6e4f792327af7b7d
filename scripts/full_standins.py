"""Every chapter on full-size random stand-ins of the paper's checkpoints: time and peak memory.

Not part of CI. Builds random-weight models with exactly the structure of Qwen2-VL-2B-Instruct and
PaliGemma-3B-448 (vlmlib.organisms.builders.standin(size="full"): hub parameter counts to the unit, real ids,
template and processor settings) and of one checkpoint of each other family: LLaVA-1.5-7B, Qwen2.5-VL-3B-
Instruct, Qwen3-VL-2B-Instruct, Gemma-3-4B-it, SmolVLM-Instruct, LLaVA-OneVision-Qwen2-0.5B
(vlmlib.organisms.family_models.family_standin(size="full")),
saves them with save_pretrained (bf16, like the hub's weights, marked as random weights so that their pages
say so), and runs each chapter through papermill with `-p model <folder>`, as a researcher would with the
real weights. Prints a Markdown table for the re-running page and writes it as JSON.

    python scripts/full_standins.py                                   # every model, every chapter
    python scripts/full_standins.py --models qwen2vl-2b --chapters 01 --n-samples 2 --dtype bfloat16
    python scripts/full_standins.py --models gemma-3-4b smolvlm-instruct --chapters 01 03

Peak memory: the largest resident set of the chapter's process tree (papermill + kernel), polled
every 0.1 s, and on a GPU the largest memory.used nvidia-smi reports above the idle baseline.
Needs ~9 GB of RAM per stand-in to build (bf16; LLaVA-1.5-7B ~15 GB) and ~5-13 GB to run a chapter on CPU
(LLaVA-1.5-7B about twice that).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(name: str, folder: Path) -> Path:
    """Save the full-size stand-in `name` to `folder` once (a finished folder has a DONE marker)."""
    import torch

    from vlmlib.models import RANDOM_WEIGHTS_MARKER
    from vlmlib.organisms.builders import STANDIN_NAMES, standin
    from vlmlib.organisms.family_models import family_standin

    if (folder / "DONE").is_file():
        return folder
    start = time.time()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: half the memory of float32
    try:
        model, processor = (standin if name in STANDIN_NAMES else family_standin)(name, size="full")
    finally:
        torch.set_default_dtype(previous)
    setattr(model.config, RANDOM_WEIGHTS_MARKER, True)  # load_model: untrained, its pages give no verdict
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    (staging / "DONE").write_text(f"{sum(p.numel() for p in model.parameters())} parameters\n")
    del model
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    print(f"built {name} in {time.time() - start:.0f} s -> {folder}", flush=True)
    return folder


class PeakMemory:
    """Polls the resident memory of a process tree (and the GPU's used memory) until stopped."""

    def __init__(self, pid: int):
        import psutil

        self.process = psutil.Process(pid)
        self.rss = 0
        self.gpu_baseline = self._gpu_used()
        self.gpu = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    @staticmethod
    def _gpu_used() -> int | None:
        if not shutil.which("nvidia-smi"):
            return None
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            return int(out.split()[0]) * 2**20
        except (subprocess.SubprocessError, ValueError, IndexError):
            return None

    def _poll(self):
        import psutil

        tick = 0
        while not self._stop.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                self.rss = max(self.rss, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            if self.gpu_baseline is not None and tick % 5 == 0:
                used = self._gpu_used()
                if used is not None:
                    self.gpu = max(self.gpu, used - self.gpu_baseline)
            tick += 1
            time.sleep(0.1)

    def stop(self):
        self._stop.set()
        self._thread.join()


def run_chapter(source: Path, model_folder: Path, out: Path, args) -> dict:
    import jupytext

    out.mkdir(parents=True, exist_ok=True)
    notebook = out / f"{source.stem}.input.ipynb"
    jupytext.write(jupytext.read(source), notebook)
    results = out / f"{source.stem}.json"
    command = [
        str(Path(sys.executable).parent / "papermill"),
        str(notebook),
        str(out / f"{source.stem}.ipynb"),
        "-k",
        "python3",
        "-p",
        "model",
        str(model_folder),
        "-p",
        "n_samples",
        str(args.n_samples),
        "-p",
        "dtype",
        args.dtype,
        "-p",
        "device",
        args.device,
        "-p",
        "results",
        str(results),
    ]
    if args.batch_size:
        command += ["-p", "batch_size", str(args.batch_size)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    start = time.time()
    process = subprocess.Popen(
        command, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = PeakMemory(process.pid)
    log, _ = process.communicate()
    peak.stop()
    seconds = time.time() - start
    (out / f"{source.stem}.log").write_text(log)
    error = None if process.returncode == 0 else (log.strip().splitlines() or ["(no output)"])[-1]
    return {
        "chapter": source.stem,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak.rss / 2**30, 2),
        "peak_gpu_gib": round(peak.gpu / 2**30, 2) if peak.gpu_baseline is not None else None,
        "ok": process.returncode == 0,
        "error": error,
    }


def main(argv=None):
    from vlmlib.organisms.builders import STANDIN_NAMES
    from vlmlib.organisms.family_models import FAMILY_STANDIN_NAMES

    names = (*STANDIN_NAMES, *FAMILY_STANDIN_NAMES)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(names), choices=names)
    parser.add_argument(
        "--chapters", nargs="+", default=None, help="chapter prefixes, e.g. 01 03 (default: all)"
    )
    parser.add_argument("--n-samples", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16", "auto"])
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "vlmlib-full-standins",
        help="where the stand-ins and the executed chapters go",
    )
    parser.add_argument("--build-only", choices=names, help=argparse.SUPPRESS)  # used internally
    args = parser.parse_args(argv)
    if args.build_only:
        build(args.build_only, args.work / "models" / args.build_only)
        return 0

    sources = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    if args.chapters:
        sources = [s for s in sources if any(s.name.startswith(c) for c in args.chapters)]
        if not sources:
            parser.error(f"no chapter matches {args.chapters}")
    rows = []
    for name in args.models:
        folder = args.work / "models" / name
        # In a process of its own, so that its memory is returned before a chapter runs.
        subprocess.run([sys.executable, __file__, "--build-only", name, "--work", str(args.work)], check=True)
        for source in sources:
            row = {
                "model": name,
                "dtype": args.dtype,
                "n_samples": args.n_samples,
                **run_chapter(source, folder, args.work / "runs" / name, args),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| model | chapter | dtype | samples | time (s) | peak RAM (GiB) | peak GPU (GiB) | ok |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        gpu = "-" if r["peak_gpu_gib"] is None else r["peak_gpu_gib"]
        print(
            f"| {r['model']} | {r['chapter']} | {r['dtype']} | {r['n_samples']} | {r['seconds']} | "
            f"{r['peak_rss_gib']} | {gpu} | {'yes' if r['ok'] else 'no: ' + str(r['error'])} |"
        )
    summary = args.work / "summary.json"
    tmp = summary.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, summary)
    print(f"\nwritten: {summary}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
