"""Throughput of the grid's executors: one small grid, local threads vs Ray with 1, 2 and 4 workers.

A fixed-latency OpenAI-compatible server on 127.0.0.1 stands in for the model (every completion takes
`--latency` seconds; answers are scripted per task and agent), so what is measured is the executor: how
many solves per second go out to the endpoint and come back into the run store. The grid is
`configs/experiments/grid_small_stub.yaml` (60 LM calls: build trajectories, classification, four
cells), run unchanged with each executor in fresh run directories, all in this one process: a first
("cold") run, in which Ray starts its workers and each imports MemCollab and builds its LMs, then a
second ("warm") run on the same cluster. Ray's own start-up (`ray.init`) is not counted.

    python benchmarks/grid_executors.py [--latency 0.2] [--out results/benchmarks/grid_executors.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from openai_stub import OpenAIStub, Seen, _prompt_text, body_hash, completion  # noqa: E402

CONFIG = ROOT / "configs" / "experiments" / "grid_small_stub.yaml"
KEY_ENV = "MEMCOLLAB_STUB_KEY"
CLASSIFIER_MARKER = "Answer with the category's name only"  # the classifier's instruction
CATEGORY = "multi_step_counting"


class LatencyStub(OpenAIStub):
    """An OpenAI-compatible endpoint that answers every completion after `latency_s`, as scripted per task.

    A prompt's task is the task whose prompt starts latest in it (demos come before the problem). The
    `strong` model answers every task; `weak` answers only every other task, unless worked examples
    (another task's prompt) are in its prompt. Classifier prompts get one category.
    """

    def __init__(self, tasks: list[Any], latency_s: float) -> None:
        super().__init__({task.prompt[:80]: str(task.answer) for task in tasks})
        self.latency_s = latency_s
        self.weak_knows = {task.prompt[:80] for i, task in enumerate(tasks) if i % 2 == 0}

    def answer(self, model: str, text: str) -> tuple[str, str]:
        """(marker, reply) for one prompt."""
        if CLASSIFIER_MARKER in text:
            return "", CATEGORY
        found = sorted((text.rfind(m), m) for m in self.answers if m in text)
        if not found:
            return "", self.default
        marker = found[-1][1]
        right = "strong" in model or marker in self.weak_knows or len(found) > 1
        value = self.answers[marker] if right else "0"
        return marker, f"Step by step, the result follows.\n\nThe answer is \\boxed{{{value}}}."

    def handle_post(self, handler: Any, body: bytes) -> None:
        time.sleep(self.latency_s)
        payload = json.loads(body or b"{}")
        marker, reply = self.answer(str(payload.get("model", "")), _prompt_text(payload))
        with self._lock:
            seen = Seen(index=len(self.seen), marker=marker, hash=body_hash(body))
            self.seen.append(seen)
        seen.answered = self._reply(handler, 200, completion(reply))


def grid_tasks() -> list[Any]:
    """Every task the small grid reads (build and evaluation), so the stub can answer each."""
    from memcollab.benchmarks import get_benchmark, load_source
    from memcollab.experiments.grid_config import load_grid_config

    cfg = load_grid_config(CONFIG)
    spec = get_benchmark(cfg.benchmarks[0])
    ids = ",".join(group.ids_for(cfg.benchmarks[0]) or "" for group in cfg.cells)
    return load_source(spec.build, ids=cfg.build_ids_for(cfg.benchmarks[0])) + load_source(spec.eval, ids=ids)


def stub_config_dir(where: Path, url: str) -> Path:
    """A MemCollab config dir (MEMCOLLAB_CONFIG_DIR) whose agents.yaml puts `weak` and `strong` on the stub."""
    where.mkdir(parents=True, exist_ok=True)
    for entry in (ROOT / "configs").iterdir():
        if entry.name != "agents.yaml" and not (where / entry.name).exists():
            (where / entry.name).symlink_to(entry)
    agent = {"backend": "litellm", "api_base": url, "api_key_env": KEY_ENV, "adapter": "natural", "max_tokens": 64}
    retries = {"num_retries": 2, "timeout": 30, "retry_backoff_s": 0.05}
    agents = [{"name": n, "model": f"openai/{n}", **agent, "extra": retries} for n in ("weak", "strong")]
    (where / "agents.yaml").write_text(yaml.safe_dump({"agents": agents}))
    return where


def run_grid_with(executor: Any, run_dir: Path, workers: int | None = None) -> tuple[Any, float]:
    """The small grid, unchanged but for its run dir (and `workers`), on `executor`: (result, wall seconds)."""
    from memcollab.experiments.grid import run_grid
    from memcollab.experiments.grid_config import load_grid_config

    cfg = load_grid_config(CONFIG, run_dir=run_dir, workers=workers)
    start = time.perf_counter()
    result = run_grid(cfg, announce=lambda _: None, show_progress=False, executor=executor)
    return result, time.perf_counter() - start


def measure(name: str, executor: Any, scratch: Path, stub: LatencyStub, workers: int | None = None) -> dict[str, Any]:
    """A cold and a warm run of the grid on one executor."""
    row: dict[str, Any] = {"executor": name}
    for phase in ("cold", "warm"):
        before = len(stub.requests())
        result, wall = run_grid_with(executor, scratch / f"{name}-{phase}", workers)
        evaluation = sum(v for k, v in result.timings.items() if k.startswith("eval."))
        row[phase] = {
            "wall_s": round(wall, 2),
            "eval_s": round(evaluation, 2),
            "requests": len(stub.requests()) - before,
            "solves": int(result.table["n"].sum() + result.table["lm_errors"].sum()),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per completion (default 0.2)")
    parser.add_argument("--ray-workers", default="1,2,4", help="Ray cluster sizes (CPUs) to measure")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "grid_executors.json")
    args = parser.parse_args()
    from memcollab.experiments.executors import LocalExecutor, RayExecutor
    from memcollab.experiments.grid_config import load_grid_config

    os.environ[KEY_ENV] = "not-a-secret"  # before ray.init: the workers inherit it
    config_workers = load_grid_config(CONFIG).workers
    rows: list[dict[str, Any]] = []
    load = [round(os.getloadavg()[0], 2)]  # other work on the machine, before and after
    with tempfile.TemporaryDirectory() as tmp, LatencyStub(grid_tasks(), args.latency) as stub:
        os.environ["MEMCOLLAB_CONFIG_DIR"] = str(stub_config_dir(Path(tmp) / "configs", stub.url))
        scratch = Path(tmp)
        for workers in dict.fromkeys((1, config_workers)):
            rows.append({**measure(f"local-w{workers}", LocalExecutor(), scratch, stub, workers), "workers": workers})
        for n in (int(x) for x in args.ray_workers.split(",")):
            with RayExecutor(num_cpus=n) as ray_executor:
                rows.append({**measure(f"ray-{n}", ray_executor, scratch, stub), "workers": n})
    load.append(round(os.getloadavg()[0], 2))
    base = next(r for r in rows if r["executor"] == f"local-w{config_workers}")
    print(
        f"\nlatency {args.latency * 1000:.0f} ms per call; {base['warm']['requests']} LM calls per grid; "
        f"ratio = throughput / local (workers={config_workers}) throughput, warm runs"
    )
    print(
        f"{'executor':<12}{'cold wall s':>12}{'warm wall s':>12}{'warm eval s':>12}{'solves/s':>10}{'ratio':>8}"
        f"{'eval ratio':>11}"
    )
    for row in rows:
        warm = row["warm"]
        row["solves_per_s"] = round(warm["solves"] / warm["eval_s"], 2)
        row["ratio"] = round(base["warm"]["wall_s"] / warm["wall_s"], 2)
        row["eval_ratio"] = round(base["warm"]["eval_s"] / warm["eval_s"], 2)
        print(
            f"{row['executor']:<12}{row['cold']['wall_s']:>12.2f}{warm['wall_s']:>12.2f}{warm['eval_s']:>12.2f}"
            f"{row['solves_per_s']:>10.2f}{row['ratio']:>8.2f}{row['eval_ratio']:>11.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "latency_s": args.latency,
                "config": str(CONFIG.relative_to(ROOT)),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": load},
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
