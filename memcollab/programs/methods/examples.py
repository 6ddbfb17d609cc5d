"""Retrieved worked examples (`examples`, ExpeL / Dynamic-Cheatsheet-RS style): the k build tasks most
similar to the new one, each with a graded-correct solution, given to the solver as real DSPy demos.

The examples are the successful build trajectories of the source agents (one per task, the first
correct attempt in agent order); similarity is TF-IDF cosine over the task statements (DSPy's `KNN`
with a scikit-learn vectoriser as its embedder), so no embedding model is needed.
"""

from __future__ import annotations

import threading
from typing import Any

import dspy
import numpy as np
from dspy.predict.knn import KNN

from memcollab.programs.methods.base import BuildInputs, Guidance, MemoryMethod
from memcollab.records import Task, Trajectory

#: Characters of reasoning kept per demo: k demos share the solver's context with the task.
REASONING_CHARS = 1500


def demo_for(task: Task, trajectory: Trajectory) -> dspy.Example | None:
    """The trajectory's first correct turn as a demo of the solver's signature for this task kind."""
    turn = next((t for t in trajectory.turns if t.verdict.correct), None)
    if turn is None:
        return None
    reasoning = turn.reasoning.strip()[:REASONING_CHARS]
    if task.kind == "math":
        return dspy.Example(problem=task.prompt, guidance="", reasoning=reasoning, answer=turn.output).with_inputs(
            "problem", "guidance"
        )
    return dspy.Example(
        task=task.prompt,
        guidance="",
        previous_attempt="",
        feedback="",
        entry_point=task.entry_point,
        reasoning=reasoning,
        code=turn.output,
    ).with_inputs("task", "guidance", "previous_attempt", "feedback", "entry_point")


class _Tfidf:
    """A TF-IDF vectoriser fitted on the examples' task statements, as a DSPy embedder function."""

    def __init__(self, texts: list[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        self.vectorizer.fit(texts)

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.vectorizer.transform(texts).toarray()


class ExamplesMemory(MemoryMethod):
    """Successful build trajectories, retrieved by task similarity."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.examples: list[tuple[Task, Trajectory, dspy.Example]] = []
        self._knn: dict[int, KNN] = {}  # by k; shared with variants (a view copies this dict's reference)
        self._lock = threading.Lock()

    def build(self, inputs: BuildInputs) -> dict[str, float]:
        order = {agent.name: i for i, agent in enumerate(inputs.agents)}
        ranked = sorted(inputs.trajectories, key=lambda t: (order.get(t.agent, len(order)), t.attempt))
        self.examples = []
        for task in inputs.tasks:
            for trajectory in (t for t in ranked if t.task_id == task.id and t.correct):
                demo = demo_for(task, trajectory)
                if demo is not None:
                    self.examples.append((task, trajectory, demo))
                    break
        self._knn.clear()
        return {"tasks": len(inputs.tasks), "examples": len(self.examples)}

    @staticmethod
    def _text(task: Task) -> str:
        return task.prompt

    def guidance(self, task: Task) -> Guidance:
        if not self.examples:
            return Guidance()
        chosen = self._index()(text=self._text(task))
        demos = tuple(self.examples[int(example["index"])][2] for example in chosen)
        ids = tuple(f"example:{self.examples[int(example['index'])][0].id}" for example in chosen)
        return Guidance(memory_ids=ids, demos=demos)

    def prepare(self, tasks: list[Task]) -> None:
        if self.examples:
            self._index()

    def _index(self) -> KNN:
        """The k-nearest-neighbour index for this view's k (made once: it vectorises every example)."""
        k = min(self.spec.k, len(self.examples))
        with self._lock:
            if k not in self._knn:
                texts = [self._text(task) for task, _, _ in self.examples]
                trainset = [dspy.Example(text=text, index=i).with_inputs("text") for i, text in enumerate(texts)]
                embedder = dspy.Embedder(_Tfidf([f"text: {text}" for text in texts]), caching=False)
                self._knn[k] = KNN(k=k, trainset=trainset, vectorizer=embedder)
            return self._knn[k]

    def records(self) -> list[dict[str, Any]]:
        return [
            {
                "id": f"example:{task.id}",
                "task_id": task.id,
                "agent": trajectory.agent,
                "attempt": trajectory.attempt,
                "output": demo.get("answer") or demo.get("code"),
                "reasoning": demo.get("reasoning"),
            }
            for task, trajectory, demo in self.examples
        ]
