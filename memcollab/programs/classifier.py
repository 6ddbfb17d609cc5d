"""The task classifier: predicts a task's category so retrieval only considers that category's memories."""

from __future__ import annotations

import dspy

from memcollab.programs.calls import call
from memcollab.records import Task
from memcollab.signatures import ClassifyTask
from memcollab.taxonomy import Taxonomy


class Classifier(dspy.Module):
    """Maps a task to one category of a taxonomy; the answer is normalised to a valid name.

    With `use_gold=True` a task that already carries a valid category (MATH subjects) keeps
    it, which gives the upper bound of task-aware retrieval.
    """

    def __init__(self, taxonomy: Taxonomy, use_gold: bool = False) -> None:
        super().__init__()
        self.taxonomy = taxonomy
        self.use_gold = use_gold
        self.classify = dspy.Predict(ClassifyTask)

    def forward(self, task: Task) -> dspy.Prediction:
        if self.use_gold and task.category in self.taxonomy.categories:
            return dspy.Prediction(category=task.category, raw=task.category)
        result = call(self.classify, task=task.prompt, categories=self.taxonomy.render_categories())
        raw = str(result.outputs.get("category", "") or result.raw)
        return dspy.Prediction(category=self.taxonomy.normalize_category(raw), raw=raw)
