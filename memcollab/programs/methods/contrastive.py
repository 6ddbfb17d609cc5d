"""MemCollab's own memory (contrast pairs of two agents, distilled), as a method: the pipeline, reused.

`memcollab`, `memcollab-xfamily` (a cross-family source pair), `memcollab-verified` (the pipeline's
`verify=True`) and the k / gate ablations are all this class: the build is `MemCollab.build` over the
method's own store, and guidance is the category-gated top-k of `StoreMethod`.
"""

from __future__ import annotations

from memcollab.errors import ConfigError
from memcollab.programs.methods.base import BuildInputs, StoreMethod


class ContrastiveMemory(StoreMethod):
    """`MemCollab.build` into this method's store; its trajectories come from the result store (cached)."""

    build_fields = ("verify", "verify_tasks", "distill_examples")

    def build(self, inputs: BuildInputs) -> dict[str, float]:
        if len({agent.name for agent in inputs.agents}) < 2:
            raise ConfigError(
                f"{self.spec.name}: a contrast needs two source agents, got {[a.name for a in inputs.agents]}"
            )
        pipeline = self.ctx.pipeline(
            self.store,
            verify=self.spec.verify,
            verify_tasks=self.spec.verify_tasks,
            distill_examples=self.spec.distill_examples,
        )
        report = pipeline.build(inputs.tasks, inputs.agents, samples=inputs.samples, temperature=inputs.temperature)
        return {
            "pairs": len(report.pairs),
            "both_correct": report.pair_stats.both_correct,
            "both_wrong": report.pair_stats.both_wrong,
            "proposed": report.proposed,
            "added": report.added,
            "merged": report.merged,
            "unverified": report.unverified,
            "size": len(self.store),
            **{f"accuracy.{name}": value for name, value in report.accuracy_by_agent.items()},
        }
