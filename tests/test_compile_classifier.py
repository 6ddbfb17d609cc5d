"""Classifier compilation with DSPy optimizers: data flow with a scripted LM (no accuracy claims)."""

from __future__ import annotations

import dspy
from dspy.utils.dummies import DummyLM

from memcollab.benchmarks import taxonomy_for
from memcollab.programs.compile import (
    classifier_examples,
    compile_classifier,
    evaluate_classifier,
    load_classifier,
    save_classifier,
)
from memcollab.records import Task

TAXONOMY = taxonomy_for("math500")


def task(i: int, subject: str) -> Task:
    return Task(
        id=f"math500/test/{i}",
        benchmark="math500",
        split="test",
        kind="math",
        prompt=f"Problem {i} about {subject.replace('_', ' ')}",
        answer="1",
        category=subject,
    )


def test_examples_keep_only_gold_categories():
    tasks = [task(1, "algebra"), task(2, "geometry"), task(3, "not_a_subject")]
    examples = classifier_examples(tasks, TAXONOMY)
    assert [e.category for e in examples] == ["algebra", "geometry"]
    assert set(examples[0].inputs().keys()) == {"task", "categories"}


def test_labeled_compile_adds_demos_saves_loads_and_evaluates(tmp_path):
    train = classifier_examples([task(i, s) for i, s in enumerate(["algebra", "geometry", "number_theory"])], TAXONOMY)
    dev = classifier_examples([task(10, "algebra"), task(11, "geometry")], TAXONOMY)
    compiled = compile_classifier(TAXONOMY, train, optimizer="labeled", max_demos=2)
    assert len(compiled.classify.demos) == 2
    path = save_classifier(compiled, tmp_path / "classifier.json")
    reloaded = load_classifier(TAXONOMY, path)
    assert [d["task"] for d in reloaded.classify.demos] == [d["task"] for d in compiled.classify.demos]

    # The scripted LM answers "algebra" for everything: half of the dev set is right.
    with dspy.context(lm=DummyLM({"Problem": {"category": "Algebra"}})):
        assert evaluate_classifier(reloaded, dev) == 0.5


def test_bootstrap_keeps_only_demos_the_metric_accepts(tmp_path):
    train = classifier_examples([task(1, "algebra"), task(2, "geometry")], TAXONOMY)
    with dspy.context(lm=DummyLM({"Problem": {"category": "algebra"}})):
        compiled = compile_classifier(TAXONOMY, train, optimizer="bootstrap", max_demos=2)
    bootstrapped = [d for d in compiled.classify.demos if d.get("augmented")]
    assert [d["category"] for d in bootstrapped] == ["algebra"], "the wrong 'geometry' trace must be rejected"
