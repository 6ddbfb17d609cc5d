"""Compiling the task classifier with DSPy optimizers, where gold categories exist (MATH subjects).

Retrieval is only as good as the predicted category, so the classifier is the program worth
optimising first: `compile_classifier` tunes its demonstrations on the memory-building split
(gold subjects) and `evaluate_classifier` measures it on held-out tasks. The compiled state is a
JSON file that `MemCollab(classifier_program=...)` loads; MLflow logs each variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import dspy

from memcollab.programs.classifier import Classifier
from memcollab.records import Task
from memcollab.taxonomy import Taxonomy

OPTIMIZERS = ("labeled", "bootstrap")


def classifier_examples(tasks: list[Task], taxonomy: Taxonomy) -> list[dspy.Example]:
    """Tasks with a gold category as DSPy examples for the inner ClassifyTask predictor."""
    categories = taxonomy.render_categories()
    return [
        dspy.Example(task=t.prompt, categories=categories, category=t.category).with_inputs("task", "categories")
        for t in tasks
        if t.category in taxonomy.categories
    ]


def category_metric(taxonomy: Taxonomy) -> Callable[..., bool]:
    def metric(example: dspy.Example, prediction: Any, trace: Any = None) -> bool:
        return taxonomy.normalize_category(str(getattr(prediction, "category", ""))) == example.category

    return metric


def compile_classifier(
    taxonomy: Taxonomy, trainset: list[dspy.Example], optimizer: str = "bootstrap", max_demos: int = 4, seed: int = 0
) -> Classifier:
    """A Classifier whose predictor was compiled by `optimizer` on `trainset` (uses the LM in context)."""
    classifier = Classifier(taxonomy)
    if optimizer == "labeled":
        compiled = dspy.LabeledFewShot(k=max_demos).compile(classifier.classify, trainset=trainset, sample=True)
    elif optimizer == "bootstrap":
        teleprompter = dspy.BootstrapFewShot(
            metric=category_metric(taxonomy), max_bootstrapped_demos=max_demos, max_labeled_demos=max_demos
        )
        compiled = teleprompter.compile(classifier.classify, trainset=trainset)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    classifier.classify = compiled
    return classifier


def evaluate_classifier(classifier: Classifier, devset: list[dspy.Example], workers: int = 1) -> float:
    """Accuracy of the classifier's predictor on examples with gold categories (dspy.Evaluate)."""
    evaluator = dspy.Evaluate(devset=devset, metric=category_metric(classifier.taxonomy), num_threads=workers,
                              display_progress=True, max_errors=len(devset) + 1)
    return float(evaluator(classifier.classify).score) / 100.0


def save_classifier(classifier: Classifier, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    classifier.save(str(path))
    return path


def load_classifier(taxonomy: Taxonomy, path: Path) -> Classifier:
    classifier = Classifier(taxonomy)
    classifier.load(str(path))
    return classifier
