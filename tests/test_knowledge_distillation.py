"""Knowledge distillation (train.distill): the loss, the teachers' targets, students that learn from teachers alone,
and the teachers a recipe cannot use."""

import json
import random

import numpy as np
import pytest
import torch
import yaml
from conftest import toy_recipe, toy_rows, write_csv
from test_cli import assert_one_clear_error
from test_qa import qa_recipe, toy_qa, write_jsonl

from slingshot.batching import pad_targets
from slingshot.data import load_data
from slingshot.distill import soft_loss, teacher_targets
from slingshot.errors import ModelError, RecipeError
from slingshot.models import load_tokenizer
from slingshot.recipe import recipe_from_dict
from slingshot.tasks import get_task
from slingshot.train import train


def test_soft_loss_is_temperature_squared_times_kl():
    teacher = torch.tensor([[0.7, 0.2, 0.1]])
    student = torch.tensor([[1.0, 0.0, -1.0]])
    q = torch.softmax(student / 2, dim=-1)
    expected = 4 * float((teacher * (teacher.log() - q.log())).sum())
    assert float(soft_loss(student, teacher, 2.0)[0]) == pytest.approx(expected, rel=1e-5)
    same = torch.softmax(student / 2, dim=-1)
    assert float(soft_loss(student, same, 2.0)[0]) == pytest.approx(0.0, abs=1e-6)


def test_per_token_targets_pad_with_zeros_that_add_no_loss():
    padded = pad_targets([[[0.5, 0.5], [0.5, 0.5]], [[1.0, 1.0]]], longest=3)
    assert padded.shape == (2, 3, 2)
    assert padded[1, 1:].abs().sum() == 0
    assert pad_targets([[0.2, 0.8], [0.6, 0.4]], longest=5).shape == (2, 2)
    assert pad_targets([1.5, 2.5], longest=5).tolist() == [1.5, 2.5]
    # a padded position whose student logit is masked to the lowest float adds exactly nothing
    logits = torch.tensor([[2.0, 0.0, torch.finfo(torch.float32).min]])
    with_pad = soft_loss(logits, torch.tensor([[0.9, 0.1, 0.0]]), 1.0)
    without = soft_loss(logits[:, :2], torch.tensor([[0.9, 0.1]]), 1.0)
    assert torch.isfinite(with_pad).all() and float(with_pad) == pytest.approx(float(without), rel=1e-5)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_bert):
    """A tiny BERT fine-tuned on the toy sentiment data: the teacher of the classification tests."""
    folder = tmp_path_factory.mktemp("teacher")
    data = {"train": write_csv(folder / "train.csv", toy_rows(160, seed=1)),
            "eval": write_csv(folder / "dev.csv", toy_rows(40, seed=2))}
    result = train(recipe_from_dict(toy_recipe(folder, tiny_bert, data, epochs=8)), show_progress=False)
    assert result.metrics["eval"]["accuracy"] >= 0.9
    return result.run.path


def student(tmp_path, tiny_bert, teachers, train_rows=None, **distill):
    data = {"train": write_csv(tmp_path / "train.csv", train_rows or toy_rows(160, seed=1)),
            "eval": write_csv(tmp_path / "dev.csv", toy_rows(40, seed=2))}
    raw = toy_recipe(tmp_path, tiny_bert, data, epochs=8, distill={"teachers": [str(t) for t in teachers], **distill})
    raw["name"] = "student"
    return recipe_from_dict(raw)


def test_targets_are_the_teachers_probabilities_at_the_temperature_averaged(tmp_path, tiny_bert, teacher_run):
    from transformers import AutoModelForSequenceClassification

    recipe = student(tmp_path, tiny_bert, [teacher_run, teacher_run / "model"], temperature=3.0)
    task = get_task("classification", recipe)
    data = load_data(recipe)
    tokenizer = load_tokenizer(tiny_bert)
    encoded = task.prepare({"train": data.splits["train"]}, tokenizer, recipe)["train"]
    targets = teacher_targets(recipe, task, data.splits["train"], encoded, tokenizer, data.label_names,
                              torch.device("cpu"), None)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(teacher_run / "model")).eval()
    texts = data.splits["train"]["text"][:5]
    with torch.no_grad():
        logits = teacher(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    order = [teacher.config.label2id[name] for name in data.label_names]  # the student's label order
    expected = torch.softmax(logits[:, order] / 3.0, dim=-1).numpy()
    np.testing.assert_allclose(np.stack(targets[:5]), expected, atol=1e-5)
    assert len(targets) == len(data.splits["train"])


def test_a_student_learns_from_the_teacher_alone_even_with_wrong_labels(tmp_path, tiny_bert, teacher_run):
    # alpha 1: the gold labels carry no weight, so shuffled labels must not matter; only the teacher can teach
    rows = toy_rows(160, seed=1)
    labels = [label for _, label in rows]
    random.Random(0).shuffle(labels)
    shuffled = [(text, label) for (text, _), label in zip(rows, labels)]
    result = train(student(tmp_path, tiny_bert, [teacher_run], shuffled, alpha=1.0), show_progress=False)
    assert result.metrics["eval"]["accuracy"] >= 0.9
    saved = yaml.safe_load(result.run.recipe.read_text())
    assert saved["train"]["distill"]["teachers"] == [str(teacher_run)]
    summary = json.loads((result.run.path / "summary.json").read_text())
    assert summary["distill"]["teachers"] == [str(teacher_run)] and summary["distill"]["teacher_time_s"] > 0

    # the same shuffled labels without a teacher: nothing to learn
    (tmp_path / "control").mkdir()
    control = student(tmp_path / "control", tiny_bert, [], shuffled)
    assert train(control, show_progress=False).metrics["eval"]["accuracy"] <= 0.75


def test_a_teacher_with_other_labels_is_refused(tmp_path, tiny_bert, teacher_run):
    rows = [(text, {"pos": "good", "neg": "bad"}[label]) for text, label in toy_rows(160, seed=1)]
    recipe = student(tmp_path, tiny_bert, [teacher_run], rows)
    recipe.data.eval = None  # the eval file's labels are pos/neg; split the train file instead
    with pytest.raises(RecipeError, match=r"predicts the labels \['neg', 'pos'\], the data has \['bad', 'good'\]"):
        train(recipe, show_progress=False)
    assert not (tmp_path / "runs" / "student").exists()


def test_a_teacher_of_another_task_is_refused(tmp_path, tiny_bert, teacher_run):
    folder = tmp_path / "qa"
    folder.mkdir()
    data = {"train": write_jsonl(folder / "train.jsonl", toy_qa(20, seed=1)),
            "eval": write_jsonl(folder / "dev.jsonl", toy_qa(10, seed=2))}
    raw = qa_recipe(folder, tiny_bert, data, train={"distill": {"teachers": [str(teacher_run)]}})
    with pytest.raises(RecipeError, match="is a classification run; this recipe trains extractive_qa"):
        train(recipe_from_dict(raw), show_progress=False)
    assert not (folder / "runs").exists()


def test_distillation_is_refused_for_tasks_it_does_not_serve():
    with pytest.raises(RecipeError, match="train.distill is for classification, regression and extractive_qa"):
        recipe_from_dict({"task": "generation", "train": {"distill": {"teachers": ["runs/x"]}}})


def test_a_missing_teacher_is_one_clear_error_and_writes_nothing(cli, tmp_path, tiny_bert, toy_data):  # noqa: F811
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, distill={"teachers": [str(tmp_path / "runs" / "nope")]})
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    code, _, err = cli("train", path)
    assert_one_clear_error(code, err, "train.distill.teachers", "nope")
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def qa_teacher(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("qa-teacher")
    data = {"train": write_jsonl(folder / "train.jsonl", toy_qa(200, seed=1)),
            "eval": write_jsonl(folder / "dev.jsonl", toy_qa(40, seed=2))}
    result = train(recipe_from_dict(qa_recipe(folder, tiny_bert, data)), show_progress=False)
    assert result.metrics["eval"]["f1"] >= 80
    return result.run.path, data


def test_a_qa_student_learns_spans_from_the_teacher_alone(tmp_path, tiny_bert, qa_teacher):
    teacher, data = qa_teacher
    # every gold answer moved to the context's first word: only the teacher knows where answers are
    wrong = []
    for row in toy_qa(200, seed=1):
        first = row["context"].split()[0]
        wrong.append({**row, "answers": [{"text": first, "answer_start": 0}]})
    train_file = write_jsonl(tmp_path / "wrong.jsonl", wrong)
    raw = qa_recipe(tmp_path, tiny_bert, {"train": train_file, "eval": data["eval"]},
                    train={"distill": {"teachers": [str(teacher)], "alpha": 1.0, "temperature": 1.0}})
    result = train(recipe_from_dict(raw), show_progress=False)
    assert result.metrics["eval"]["f1"] >= 80


def test_qa_targets_are_distributions_over_each_window(tmp_path, tiny_bert, qa_teacher):
    teacher, data = qa_teacher
    recipe = recipe_from_dict(qa_recipe(tmp_path, tiny_bert, data, train={"distill": {"teachers": [str(teacher)]}}))
    task = get_task("extractive_qa", recipe)
    loaded = load_data(recipe)
    tokenizer = load_tokenizer(tiny_bert)
    encoded = task.prepare({"train": loaded.splits["train"]}, tokenizer, recipe)["train"]
    targets = teacher_targets(recipe, task, loaded.splits["train"], encoded, tokenizer, None, torch.device("cpu"), None)
    assert len(targets) == len(encoded)
    for target, length in zip(targets[:20], encoded["length"][:20]):
        assert target.shape == (length, 2)
        np.testing.assert_allclose(target.sum(axis=0), [1.0, 1.0], atol=1e-4)


def test_a_qa_teacher_with_another_tokenizer_is_refused(tmp_path, tiny_bert, qa_teacher):
    from transformers import BertTokenizerFast

    teacher, data = qa_teacher
    other = tmp_path / "other-teacher"
    other.mkdir()
    for item in (teacher / "model").iterdir():
        if item.name not in ("tokenizer.json", "tokenizer_config.json"):
            (other / item.name).write_bytes(item.read_bytes())
    vocab = load_tokenizer(tiny_bert).get_vocab()
    BertTokenizerFast(vocab=vocab, do_lower_case=False, model_max_length=64).save_pretrained(other)  # cased
    raw = qa_recipe(tmp_path, tiny_bert, data, train={"distill": {"teachers": [str(other)]}})
    with pytest.raises(RecipeError, match="tokenizes differently from the student"):
        train(recipe_from_dict(raw), show_progress=False)


def test_an_unfinished_run_as_teacher_says_so(tmp_path, tiny_bert, toy_data):
    unfinished = tmp_path / "runs" / "half"
    unfinished.mkdir(parents=True)
    (unfinished / "recipe.yaml").write_text(json.dumps({"task": "classification"}), encoding="utf-8")
    raw = toy_recipe(tmp_path, tiny_bert, toy_data, distill={"teachers": [str(unfinished)]})
    with pytest.raises(Exception, match="has no trained model") as caught:
        train(recipe_from_dict(raw), show_progress=False)
    assert not isinstance(caught.value, ModelError)


def test_a_regression_student_fits_the_teachers_scores(tmp_path, tiny_bert):
    def scores(rows):
        return [(text, 1.0 if label == "pos" else 0.0) for text, label in rows]

    def recipe(folder, rows, **distill):
        data = {"train": write_csv(folder / "train.csv", rows),
                "eval": write_csv(folder / "dev.csv", scores(toy_rows(40, seed=2)))}
        raw = toy_recipe(folder, tiny_bert, data, epochs=8, distill=distill)
        raw["task"] = "regression"
        return recipe_from_dict(raw)

    (tmp_path / "teacher").mkdir()
    teacher = train(recipe(tmp_path / "teacher", scores(toy_rows(160, seed=1))), show_progress=False)
    assert teacher.metrics["eval"]["pearson"] > 0.8
    shuffled = [text for text, _ in toy_rows(160, seed=1)]
    values = [score for _, score in scores(toy_rows(160, seed=1))]
    random.Random(0).shuffle(values)
    student_run = train(recipe(tmp_path, list(zip(shuffled, values)), teachers=[str(teacher.run.path)], alpha=1.0),
                        show_progress=False)
    assert student_run.metrics["eval"]["pearson"] > 0.8
