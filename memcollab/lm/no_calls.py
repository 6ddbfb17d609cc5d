"""An LM that refuses every call, for passes that must only read stored results back.

`memcollab grid --tables-only` rewrites a grid's tables from the results its finished cells left in the store.
If one of those results is missing (the code or the config changed since the cell ran), the pass must stop and
say so, not quietly start hours of model calls; it also needs no model server at all.
"""

from __future__ import annotations

from typing import Any

import dspy

from memcollab.errors import ConfigError


class NoCallsLM(dspy.BaseLM):
    """Raises ConfigError on any call: what it would have answered is not in the result store."""

    def __init__(self, agent: str, why: str) -> None:
        super().__init__(model=f"no-calls/{agent}", cache=False)
        self.agent, self.why = agent, why

    def _refuse(self) -> None:
        raise ConfigError(f"agent {self.agent!r} would need a new LM call: {self.why}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse()

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse()

    async def aforward(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse()
