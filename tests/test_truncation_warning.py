"""DSPy's truncation warning is shown once per process, whatever number of tasks hit max_tokens."""

from __future__ import annotations

import logging

from memcollab.lm.config import AgentConfig
from memcollab.lm.factory import TruncationWarningOnce, build_lm, quiet_truncation_warnings

TRUNCATED = "LM response was truncated; increase max_tokens or inspect history."


def test_the_filter_passes_the_first_truncation_and_every_other_record() -> None:
    once = TruncationWarningOnce()
    records = [
        logging.LogRecord("dspy.clients.lm", logging.WARNING, __file__, 1, msg, (), None)
        for msg in (TRUNCATED, "something else", TRUNCATED, TRUNCATED)
    ]
    passed = [r.getMessage() for r in records if once.filter(r)]
    assert passed == [TRUNCATED + " (shown once; later truncations are not reported)", "something else"]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_building_an_lm_installs_the_filter_on_dspys_logger() -> None:
    build_lm(AgentConfig(name="remote", backend="litellm", model="openai/gpt-4o-mini"), cache=False)
    logger = logging.getLogger("dspy.clients.lm")  # DSPy's own logger (it does not propagate to the root)
    installed = [f for f in logger.filters if isinstance(f, TruncationWarningOnce)]
    assert installed == [quiet_truncation_warnings()]
    installed[0].seen = False
    collect = _Collect()
    logger.addHandler(collect)
    try:
        for _ in range(5):
            logger.warning(TRUNCATED)
    finally:
        logger.removeHandler(collect)
    assert [m for m in collect.messages if "truncated" in m] == [
        TRUNCATED + " (shown once; later truncations are not reported)"
    ]
