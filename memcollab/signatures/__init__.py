"""DSPy Signatures: what each LM call asks for. Programs compose them; the docstrings are the instructions."""

from memcollab.signatures.classify import ClassifyTask
from memcollab.signatures.distill import Constraint, ContrastDistill
from memcollab.signatures.reflect import Reflect
from memcollab.signatures.solve import CompleteFunction, SolveMath, WriteFunction

__all__ = ["ClassifyTask", "CompleteFunction", "Constraint", "ContrastDistill", "Reflect", "SolveMath", "WriteFunction"]
