"""Graders: pure functions of (task, output). The sandbox is the only place that runs model code."""

from memcollab.grading.grade import grade, grade_many

__all__ = ["grade", "grade_many"]
