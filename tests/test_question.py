"""Your own task (issue 25, deliverables 4 and 5): a dataset's own question and the `question` parameter
make the prompt; answers of several tokens are scored whole with the checkpoint's own tokenizer (a real
byte-level BPE built offline); a page says when the paper's comparison does not apply to the task it ran;
images are drawn or resized at the size the checkpoint expects (`image_size`), with clear errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmlib import load_model, shapes_samples
from vlmlib.data import VOCABULARY, load_samples, make_shapes_sample
from vlmlib.data.samples import QUESTION, fit_image, with_question
from vlmlib.interventions.knockout import Knockout, knockout_experiment, query_mask
from vlmlib.interventions.patching import Patch, patch_experiment, teacher_forced_inputs
from vlmlib.models import RANDOM_WEIGHTS_MARKER, native_image_size, wrap_model
from vlmlib.organisms.builders import REAL_CONFIGS, standin_config, tiny_paligemma, tiny_qwen2vl
from vlmlib.params import ParameterError

ROOT = Path(__file__).resolve().parent.parent
COLOUR_QUESTION = "What colour is the shape?"
COUNT_QUESTION = "How many shapes are there?"
NUMBERS = ["one", "two", "three", "four", "five", "six"]
WORDS = [*VOCABULARY, *COLOUR_QUESTION.split(), *COUNT_QUESTION.split(), *NUMBERS]
BUILDERS = {"paligemma": tiny_paligemma, "qwen2vl": tiny_qwen2vl}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def subword_model(family: str):
    """A tiny random model of the family whose tokenizer is a byte-level BPE trained here (`bpe_tokenizer`):
    'yellow square' and 'three' are several tokens each."""
    model, processor = BUILDERS[family](vocabulary=WORDS, tokenizer="bpe")
    return model, processor


@pytest.fixture(scope="module", params=list(BUILDERS))
def lm(request):
    model, processor = subword_model(request.param)
    return wrap_model(model, processor, f"{request.param}-bpe", False, "", torch.device("cpu"), torch.float32)


def write_folder(folder: Path, n: int = 8, question_column: bool = True) -> Path:
    """Single-shape images, 4 squares and 4 circles (chapter 5's categories, 2 folds), each asked either
    its colour (answer 'yellow square') or the number of shapes (answer 'three'), in words."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, counts, i = [], {"square": 0, "circle": 0}, 0
    while len(rows) < n:
        sample = make_shapes_sample(i, seed=3, single_category=True)
        i += 1
        shape = sample.category
        if counts.get(shape, n) >= n // 2:
            continue
        counts[shape] += 1
        name = f"img{len(rows)}.png"
        sample.image.save(folder / name)
        colour = sample.objects[0][1]
        row = {"file_name": name, "caption": sample.caption, "category": shape}
        if len(rows) % 2 == 0:
            row.update(question=COLOUR_QUESTION, answer=f"{colour} {shape}")
        else:
            row.update(question=COUNT_QUESTION, answer=NUMBERS[len(sample.objects) - 1])
        if not question_column:
            row.pop("question")
        rows.append(row)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i : i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


# ---------------------------------------------------------------- the question


def test_a_folders_question_column_is_the_prompt(lm, tmp_path):
    samples = load_samples(str(write_folder(tmp_path / "data")), 4)
    assert {s.question for s in samples} == {COLOUR_QUESTION, COUNT_QUESTION}
    inputs = lm.encode_samples(samples)
    for row, sample in enumerate(samples):
        ids = inputs["input_ids"][row].tolist()
        question = lm.processor.tokenizer.encode(sample.question, add_special_tokens=False)
        assert contains(ids, question), sample.question
        assert not contains(ids, lm.processor.tokenizer.encode(QUESTION, add_special_tokens=False))


def test_the_question_parameter_overrides_the_column_and_drops_its_answers(lm, tmp_path):
    folder = write_folder(tmp_path / "data")
    asked = load_samples(str(folder), 4, question="Which shape is it?")
    assert {s.question for s in asked} == {"Which shape is it?"}
    assert all(s.answer is None for s in asked)  # they answered the folder's own questions
    ids = lm.encode_samples(asked)["input_ids"][0].tolist()
    assert contains(ids, lm.processor.tokenizer.encode("Which shape is it?", add_special_tokens=False))
    # a folder that states no question: its answers answer the question asked
    plain = load_samples(str(write_folder(tmp_path / "plain", question_column=False)), 4, question="Name it?")
    assert {s.question for s in plain} == {"Name it?"} and all(s.answer for s in plain)
    assert {s.question for s in load_samples(str(tmp_path / "plain"), 4)} == {QUESTION}
    # the synthetic sets' counts do not answer another question
    shapes = load_samples("shapes", 3, question=COLOUR_QUESTION)
    assert all(s.question == COLOUR_QUESTION and s.answer is None for s in shapes)
    assert load_samples("shapes", 3, question=QUESTION)[0].answer is not None
    with pytest.raises(ParameterError, match="question"):
        load_samples("shapes", 3, question="  ")


def test_another_question_keeps_a_sample_lists_type_and_report():
    class Fetched(list):
        pass

    fetched = Fetched(shapes_samples(2))
    fetched.report = "what was skipped"
    asked = with_question(fetched, COLOUR_QUESTION)
    assert type(asked) is Fetched and asked.report == "what was skipped"
    assert with_question(fetched, None) is fetched


# ---------------------------------------------------------------- answers of several tokens, scored whole


def hand_scores(lm, sample, answer: str) -> tuple[float, bool]:
    """log p(answer | prompt) and greedy-equals-answer from one plain forward pass over prompt + answer."""
    tokens = lm.processor.tokenizer.encode(answer, add_special_tokens=False)
    prompt = lm.encode_samples([sample])
    n = int(prompt["attention_mask"].sum())
    full = lm.encode([sample.image], [sample.question], [answer])
    full.pop("labels", None)
    assert full["input_ids"][0, n : n + len(tokens)].tolist() == tokens
    with torch.no_grad():
        logits = lm.model(**full, use_cache=False).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    positions = range(n - 1, n - 1 + len(tokens))
    total = sum(float(logprobs[p, t]) for p, t in zip(positions, tokens))
    greedy = [int(logits[p].argmax()) for p in positions]
    return total, greedy == tokens


def test_multi_token_answers_are_scored_whole_as_by_hand(lm):
    samples = shapes_samples(3, seed=5)
    answers = ["yellow square", "three", "red"]
    samples = [replace(s, question=COLOUR_QUESTION, answer=a) for s, a in zip(samples, answers)]
    assert [len(lm.answer_token_ids(a)) for a in answers[:2]] >= [2, 2]
    # make the third answer the model's own greedy continuation, so that "correct" is true once
    prompt = lm.encode_samples(samples[2:])
    with torch.no_grad():
        first = int(lm.last_token_logits(prompt)[0].argmax())
    greedy_text = lm.processor.tokenizer.decode([first])
    if lm.answer_token_ids(greedy_text) == [first]:
        samples[2] = replace(samples[2], answer=greedy_text)
    expected = [hand_scores(lm, s, s.answer) for s in samples]
    patched = patch_experiment(lm, samples, [Patch("attn", (1,), (2,), "text")], batch_size=2)
    knocked = knockout_experiment(lm, samples, [Knockout((0, 1), "final")], batch_size=2)
    for result in (patched.conditions["answer"].clean, knocked.clean):
        np.testing.assert_allclose(result["logprob"], [e[0] for e in expected], rtol=1e-4, atol=1e-4)
        assert result["correct"].tolist() == [e[1] for e in expected]
    assert patched.rows()[0]["answer_tokens"] >= 3 and knocked.answer_tokens >= 3
    assert knocked.to_dict()["answer_tokens"] == knocked.answer_tokens


def test_a_knockout_of_the_final_position_covers_every_answer_position(lm):
    samples = [replace(s, answer="yellow square") for s in shapes_samples(2, seed=1)]
    tokens = [lm.answer_token_ids(s.answer) for s in samples]
    prompt = lm.encode_samples(samples)
    inputs, read_at, _ = teacher_forced_inputs(lm, samples, prompt, [s.answer for s in samples], tokens)
    mask = query_mask(lm, inputs, "final", read_at)
    for row in range(2):
        n = int(prompt["attention_mask"][row].sum())
        assert mask[row].nonzero().flatten().tolist() == list(range(n - 1, n - 1 + len(tokens[row])))
    # the knocked pass through a lean resume equals the whole pass
    kos = [Knockout((1,), "final"), Knockout((2, 3), "text")]
    lean = knockout_experiment(lm, samples, kos, batch_size=2)
    whole = knockout_experiment(lm, samples, kos, batch_size=2, lean=False, reuse_vision=False)
    np.testing.assert_allclose(lean.knocked["logprob"], whole.knocked["logprob"], atol=1e-4)


# ---------------------------------------------------------------- the page: is the paper's comparison valid


def test_verdicts_are_not_comparable_on_another_task_with_the_reason():
    from vlmlib.paper.chapters import all_claims
    from vlmlib.paper.claims import HOLDS, NOT_COMPARABLE, evaluate

    task = {"questions": [COLOUR_QUESTION], "n_questions": 1, "paper_task": False}
    by_id = {c.claim_id: c for c in all_claims()}
    dependent = replace(
        by_id["attention-patching"],
        rule=lambda r: {"ours": "x", "spread": None, "verdict": HOLDS, "reason": "r"},
    )
    found = evaluate(dependent, {"trained": True, "family": "paligemma", "task": task})
    assert found["verdict"] == NOT_COMPARABLE and COLOUR_QUESTION in found["reason"]
    assert "counting question" in found["reason"]
    independent = replace(by_id["similarity-drop"], rule=dependent.rule, last_layer_series=())
    kept = evaluate(independent, {"trained": True, "family": "paligemma", "task": task})
    assert kept["verdict"] == HOLDS and COLOUR_QUESTION in kept["reason"]
    same = evaluate(dependent, {"trained": True, "family": "paligemma", "task": {**task, "paper_task": True}})
    assert same["verdict"] == HOLDS
    assert not by_id["similarity-drop"].task_dependent and by_id["front-patching-asymmetry"].task_dependent


def test_the_header_warns_when_the_task_is_not_the_papers():
    from vlmlib.paper.chapters import chapter_spec
    from vlmlib.paper.run import task_warning

    other = {"questions": [COLOUR_QUESTION], "n_questions": 1, "paper_task": False, "answer_tokens": 3}
    note = task_warning(chapter_spec("03_attention_patching"), other)
    assert "Not the paper's task" in note and COLOUR_QUESTION in note and "not comparable" in note
    assert "scored whole" in note
    assert "still applies" in task_warning(chapter_spec("01_representations"), other)
    assert task_warning(chapter_spec("03_attention_patching"), {**other, "paper_task": True}) is None


# ---------------------------------------------------------------- images at the size the model expects


def image_tokens(name: str, image_size: int | None) -> tuple[int, int]:
    """(native side, image tokens of one shapes sample at `image_size` or the native side) of a stand-in's
    real processor settings (no weights built)."""
    from vlmlib.families import family_for_config

    config, processor = standin_config(REAL_CONFIGS[name], False)
    side = native_image_size(processor)
    sample = load_samples("shapes", 1, image_size=image_size or side)[0]
    family = family_for_config(config)
    inputs = family.encode(processor, [sample.image], [sample.question])
    token = getattr(config, "image_token_id", None) or config.image_token_index
    return side, int((inputs["input_ids"] == token).sum())


def test_image_size_gives_each_family_its_image_tokens():
    assert image_tokens("paligemma-3b-448", None) == (448, 1024)  # the paper's PaliGemma
    assert image_tokens("qwen2vl-2b", None) == (448, 256)  # (448 / 14)^2 / 4: hundreds, not 4
    assert image_tokens("qwen2vl-2b", 224)[1] == 64
    assert image_tokens("paligemma-3b-448", 64)[1] == 1024  # a fixed-size processor resizes anyway
    for name in ("paligemma-shapes", "qwen2vl-shapes"):  # the organisms' training size
        assert load_model(name).native_image_size() == 64


def test_images_are_drawn_and_resized_at_image_size(tmp_path):
    assert load_samples("shapes", 1, image_size=448)[0].image.size == (448, 448)
    assert load_samples("shapes", 1)[0].image.size == (64, 64)
    assert load_samples("scenes", 1, image_size=96)[0].image.size == (96, 96)
    folder = write_folder(tmp_path / "data", n=2)
    wide = folder / "img0.png"
    from PIL import Image

    Image.new("RGB", (200, 100)).save(wide)
    sizes = {s.id: s.image.size for s in load_samples(str(folder), 2, image_size=100)}
    assert sizes["img0.png"] == (100, 50) and sizes["img1.png"] == (100, 100)
    assert fit_image(Image.new("RGB", (30, 60)), None).size == (30, 60)


@pytest.mark.parametrize("bad", [8, 5000, "big", 3.5, True])
def test_bad_image_sizes_are_refused_with_the_parameters_name(bad):
    with pytest.raises(ParameterError, match="image_size"):
        load_samples("shapes", 1, image_size=bad)


def test_the_runner_checks_question_and_image_size_before_anything_runs(tmp_path):
    from vlmlib.book.plan import UsageError, make_plan

    def plan(*parameters):
        return make_plan(
            root=ROOT,
            out=tmp_path,
            chapter_selection=["01"],
            only=["paligemma"],
            parameters=list(parameters),
            replicates=False,
        )

    values = plan(("question", COLOUR_QUESTION), ("image_size", "448")).parameters["01_representations"]
    assert values == {"question": COLOUR_QUESTION, "image_size": 448}
    for parameters, message in [
        (("image_size", "8"), "at least 16"),
        (("image_size", "99999"), "at most 4096"),
        (("question", ""), "non-empty text"),
        (("imagesize", "448"), "did you mean 'image_size'"),
        (("questoin", "x"), "did you mean 'question'"),
    ]:
        with pytest.raises(UsageError, match=message):
            plan(parameters)


# ---------------------------------------------------------------- every chapter, own question, subword answer


def save_subword_model(folder: Path, family: str) -> Path:
    model, processor = subword_model(family)
    setattr(model.config, RANDOM_WEIGHTS_MARKER, True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family,chapters", [("paligemma", None), ("qwen2vl", ["03", "08"])])
def test_every_chapter_runs_on_an_own_question_with_subword_answers(tmp_path, family, chapters):
    from vlmlib.book.plan import make_plan
    from vlmlib.book.runner import run_plan

    folder = save_subword_model(tmp_path / f"{family}-bpe", family)
    data = write_folder(tmp_path / "data")
    selection = chapters or [f"0{i}" for i in range(1, 9)]
    run_plan(
        make_plan(
            root=ROOT,
            out=tmp_path / "out",
            chapter_selection=selection,
            only=[family],
            models=[f"{family}={folder}"],
            parameters=[("dataset", str(data)), ("n_samples", "8"), ("batch_size", "4")]
            + ([("folds", "2")] if "05" in selection else []),
            replicates=False,
        ),
        progress=False,
    )
    part = tmp_path / "out" / family
    lm = load_model(str(folder), device="cpu", dtype="float32")
    samples = load_samples(str(data), 8, image_size=lm.native_image_size())
    expected = np.mean([hand_scores(lm, s, s.answer)[0] for s in samples])
    for stem in selection:
        source = next(ROOT.glob(f"notebooks/{stem}*.py")).stem
        results = json.loads((part / f"{source}.json").read_text())
        task = results["task"]
        assert task["paper_task"] is False and task["n_questions"] == 2 and task["answer_tokens"] > 1
        page = (part / f"{source}.ipynb").read_text()
        assert "Not the paper" in page, source
        if stem == "03":
            answer_rows = [r for r in results["rows"] if r["condition"] == "answer"]
            assert answer_rows and all(r["answer_tokens"] > 1 for r in answer_rows)
            np.testing.assert_allclose(answer_rows[0]["clean_logprob"], expected, rtol=1e-4)
        if stem == "08":
            rows = results["knockout"]["rows"] if "knockout" in results else results["rows"]
            np.testing.assert_allclose(rows[0]["clean_logprob"], expected, rtol=1e-4)
