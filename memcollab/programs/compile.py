"""Compiling MemCollab's DSPy programs: the solver and the task classifier.

The solver: `compile_solver` gives its predictors demonstrations from the memory-building split
(`labeled`: the benchmark's own reference solutions, e.g. GSM8K train's worked answers;
`bootstrap`: the agent's own traces that the real grader accepts). Demos render in the adapter's
form (for small models, plain chat turns), so a compiled solver is still a plain chat with examples.

The classifier: retrieval is only as good as the predicted category; `compile_classifier` tunes its
demonstrations on the build split's gold categories (MATH subjects) and `evaluate_classifier`
measures it on held-out tasks. Compiled states are JSON files that `MemCollab(solver_program=...,
classifier_program=...)` load; MLflow logs each variant.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy

from memcollab.grading import grade
from memcollab.grading.code_extract import prompt_is_code
from memcollab.programs.classifier import Classifier
from memcollab.programs.solver import Solver
from memcollab.records import Task
from memcollab.taxonomy import Taxonomy

OPTIMIZERS = ("labeled", "bootstrap")
_CALCULATOR = re.compile(r"<<[^>]*>>")


def worked_solution(task: Task) -> str:
    """A reference solution as reasoning: GSM8K's calculator marks and `#### answer` line removed."""
    text = _CALCULATOR.sub("", task.solution)
    return text.rsplit("####", 1)[0].strip() if "####" in text else text.strip()


def solver_examples(tasks: list[Task]) -> dict[str, list[dspy.Example]]:
    """Build tasks with reference solutions as examples, keyed by the Solver predictor that takes them."""
    by_predictor: dict[str, list[dspy.Example]] = {}
    for task in tasks:
        if not task.solution:
            continue
        if task.kind == "math":
            name = "solve_math"
            example = dspy.Example(
                problem=task.prompt,
                guidance="",
                reasoning=worked_solution(task),
                answer=task.answer or "",
                task_id=task.id,
            ).with_inputs("problem", "guidance")
        else:
            name = "complete_function" if prompt_is_code(task.prompt) else "write_function"
            example = dspy.Example(
                task=task.prompt,
                guidance="",
                previous_attempt="",
                feedback="",
                entry_point=task.entry_point,
                code=task.solution,
                task_id=task.id,
            ).with_inputs("task", "guidance", "previous_attempt", "feedback", "entry_point")
        by_predictor.setdefault(name, []).append(example)
    return by_predictor


def solver_metric(tasks: list[Task]) -> Callable[..., bool]:
    """The real grader as a DSPy metric: a prediction counts when its answer or code grades correct."""
    by_id = {task.id: task for task in tasks}

    def metric(example: dspy.Example, prediction: Any, trace: Any = None) -> bool:
        task = by_id[example.task_id]
        if task.kind == "math":
            return grade(task, f"\\boxed{{{getattr(prediction, 'answer', '') or ''}}}").correct
        return grade(task, str(getattr(prediction, "code", "") or "")).correct

    return metric


def compile_solver(tasks: list[Task], optimizer: str = "labeled", max_demos: int = 3, max_turns: int = 3) -> Solver:
    """A Solver whose predictors carry demos from `tasks` (`bootstrap` runs the LM in context on them)."""
    solver = Solver(max_turns=max_turns)
    for name, trainset in solver_examples(tasks).items():
        predictor = getattr(solver, name)
        if optimizer == "labeled":
            compiled = dspy.LabeledFewShot(k=max_demos).compile(predictor, trainset=trainset, sample=False)
        elif optimizer == "bootstrap":
            teleprompter = dspy.BootstrapFewShot(
                metric=solver_metric(tasks), max_bootstrapped_demos=max_demos, max_labeled_demos=0, max_rounds=1
            )
            compiled = teleprompter.compile(predictor, trainset=trainset)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
        setattr(solver, name, compiled)
    return solver


def save_program(program: dspy.Module, path: Path) -> Path:
    """A compiled program's state (demos, instructions) as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


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
    evaluator = dspy.Evaluate(
        devset=devset,
        metric=category_metric(classifier.taxonomy),
        num_threads=workers,
        display_progress=True,
        max_errors=len(devset) + 1,
    )
    return float(evaluator(classifier.classify).score) / 100.0


def load_classifier(taxonomy: Taxonomy, path: Path) -> Classifier:
    classifier = Classifier(taxonomy)
    classifier.load(str(path))
    return classifier


save_classifier = save_program
