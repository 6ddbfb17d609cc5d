"""Task classifier signature: which category of the taxonomy a task belongs to."""

import dspy


class ClassifyTask(dspy.Signature):
    """Classify the task into exactly one category of the given taxonomy.

    Read what the task asks for and the main skill needed to solve it, compare it with
    each category's description, and answer with the name of the single best category,
    spelled exactly as in the list.
    """

    task: str = dspy.InputField(desc="the task statement")
    categories: str = dspy.InputField(desc="one per line: name: description")
    category: str = dspy.OutputField(desc="one category name from the list")
