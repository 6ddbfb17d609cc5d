"""Pipeline commands: `run` (the main job), `build-memory` and `evaluate`.

Each is a thin layer over `memcollab.experiments`: options become a RunConfig, `preflight`
validates every split, agent and path the command will use (before anything is written or any
LM is called), the Experiment does the work, and a rich table shows the outcome.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from memcollab.cli.consoles import make_console

console = make_console()
err = make_console(stderr=True)


def _bench_help() -> str:
    """`gsm8k | math500 | ...`, naming the benchmarks that build memory from another one."""
    from memcollab.benchmarks import BENCHMARKS

    borrowed = [f"{s.name} builds memory from {s.build}" for s in BENCHMARKS.values() if s.build.benchmark != s.name]
    return " | ".join(BENCHMARKS) + (f" ({'; '.join(borrowed)})" if borrowed else "")


BENCH_HELP = _bench_help()
IDS_HELP = "task ids, tails or inclusive ranges of numeric tails, e.g. 1-100 or 1001-1100,1205 (wins over the limit)"

# Options shared by every pipeline command (typer reads these markers; one definition, one help text).
AGENTS_FILE = typer.Option(None, "--agents-file", help="agents YAML (default: configs/agents.yaml)")
WORKERS = typer.Option(4, "--workers", help="concurrent LM calls")
DATA_DIR = typer.Option(None, "--data-dir", help="benchmark data directory (default: ../shared/data)")
MAX_TOKENS = typer.Option(None, "--max-tokens", help="override every agent's max tokens")
BACKEND = typer.Option(
    None, "--backend", help="embedded agents' backend: auto (server if llama-server is installed) | local | server"
)
TRACKING_URI = typer.Option(None, "--tracking-uri", help="MLflow URI (default: sqlite in the run dir)")
TRACK = typer.Option(True, "--track/--no-track", help="log to MLflow")
CACHE = typer.Option(True, "--cache/--no-cache", help="DSPy LM cache under the run dir")
SAMPLE = typer.Option(False, "--sample/--no-sample", help="take a seeded random sample instead of the first N")
SEED = typer.Option(0, "--seed", help="seed for --sample")
VERIFY = typer.Option(
    False,
    "--verify-memory/--no-verify-memory",
    help="store a distilled constraint only if, given alone as guidance, it lets the agent that failed the source "
    "task solve it and breaks none of --verify-tasks build tasks of its category that the agents solved without it "
    "(beyond the paper)",
)
VERIFY_TASKS = typer.Option(
    3, "--verify-tasks", help="with --verify-memory: solved build tasks per agent a constraint must not break (0: skip)"
)
EXAMPLES = typer.Option(
    False,
    "--distill-examples/--no-distill-examples",
    help="show the distiller the worked examples of configs/distill_examples/ before each pair",
)
RUN_DIR = typer.Option(Path("runs/default"), "--run-dir", help="where results, memory and caches go (a rerun resumes)")
MAX_ERRORS = typer.Option(
    10,
    "--max-errors",
    min=0,
    help="LM calls that may fail after retries (endpoint down, hung, overloaded) before a step stops; each such task "
    "is recorded as an LM error, not stored, and retried by a rerun",
)

STORE_URL_HELP = (
    "keep the run's results and memory in this PostgreSQL database (postgresql://user@host:port/db) instead of "
    "SQLite files in the run dir, each store in a schema of its own named from the run dir's name and the store "
    "(mc_RUN__results, mc_RUN__memory); runs with the same run dir name and URL share them, on any machine. "
    "Password: PGPASSWORD or ~/.pgpass. Needs pip install 'memcollab[scale]'"
)
STORE_URL = typer.Option(None, "--store-url", help=STORE_URL_HELP)


#: The options every pipeline command takes, added to each command's signature by `with_run_options`.
RUN_OPTIONS: dict[str, tuple[object, object]] = {
    "agents_file": (Optional[Path], AGENTS_FILE),
    "workers": (int, WORKERS),
    "run_dir": (Path, RUN_DIR),
    "data_dir": (Optional[Path], DATA_DIR),
    "max_tokens": (Optional[int], MAX_TOKENS),
    "backend": (Optional[str], BACKEND),
    "tracking_uri": (Optional[str], TRACKING_URI),
    "track": (bool, TRACK),
    "cache": (bool, CACHE),
    "max_errors": (int, MAX_ERRORS),
    "store_url": (Optional[str], STORE_URL),
}


def with_run_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` gains the shared options (typer reads the new signature); they reach it as keyword arguments.

    One definition of each shared option instead of the same ten parameters copied into every command.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
        for name, (annotation, option) in RUN_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        command(**kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*own, *shared])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *shared]}
    return wrapper


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _config(**kwargs):
    """A RunConfig from the options (None = the default); a bad value is one line naming the field."""
    from memcollab.experiments.config import make_config

    return make_config(**kwargs)


def print_results(summaries, title: str = "results") -> None:
    table = Table(title=title)
    for column in ("agent", "memory", "n", "accuracy", "95% CI", "turns", "tokens/task", "format errors", "LM errors"):
        table.add_column(column, justify="right" if column not in ("agent", "memory") else "left")
    for s in summaries:
        table.add_row(
            s.agent,
            s.condition,
            str(s.n),
            f"{s.accuracy:.1%}",
            f"{s.ci_low:.0%}-{s.ci_high:.0%}",
            f"{s.mean_turns:.2f}",
            f"{s.mean_tokens:.0f}",
            str(s.format_errors),
            str(s.lm_errors),
        )
    console.print(table)
    lm_errors = sum(s.lm_errors for s in summaries)
    if lm_errors:
        console.print(
            f"{lm_errors} task(s) got no answer from their LM (LM errors: not counted in n); "
            "rerun the same command to retry only those",
            markup=False,
        )


def print_build(report, store_size: int) -> None:
    stats = report.pair_stats
    accuracy = ", ".join(f"{a} {v:.0%}" for a, v in report.accuracy_by_agent.items())
    console.print(
        f"memory build: {stats.tasks} tasks ({accuracy}); {len(report.pairs)} contrast pairs, "
        f"{stats.both_correct} both correct, {stats.both_wrong} both wrong; {report.proposed} constraints proposed, "
        f"{report.added} added, {report.merged} merged into existing"
        + (f", {report.unverified} failed verification" if report.unverified else "")
        + f"; memory size {store_size}"
        + (f"; {report.lm_errors} LM calls failed (LM errors: rerun to retry them)" if report.lm_errors else "")
    )


@with_run_options
def run_command(
    benchmark: str = typer.Option("gsm8k", help=BENCH_HELP),
    build_limit: int = typer.Option(20, help="memory-building tasks (first N of the build split)"),
    eval_limit: int = typer.Option(20, help="evaluation tasks (first N of the evaluation split)"),
    build_ids: Optional[str] = typer.Option(None, help="memory-building tasks by id: " + IDS_HELP),
    eval_ids: Optional[str] = typer.Option(None, help="evaluation tasks by id: " + IDS_HELP),
    sample: bool = SAMPLE,
    seed: int = SEED,
    build_agents: str = typer.Option("weak,strong", help="agents that solve the build tasks (comma-separated)"),
    eval_agents: str = typer.Option("weak,other", help="agents evaluated with and without memory"),
    distiller: Optional[str] = typer.Option(None, help="agent that distills pairs (default: last build agent)"),
    classifier: Optional[str] = typer.Option(None, help="agent that classifies tasks (default: the distiller)"),
    k: int = typer.Option(3, help="memories retrieved per task"),
    max_turns: int = typer.Option(3, help="code tasks: turns with execution feedback"),
    samples: int = typer.Option(0, help="extra sampled attempts for tasks without a contrast"),
    gold_categories: bool = typer.Option(
        False, help="use the data's categories (MATH subjects) instead of the classifier"
    ),
    classifier_program: Optional[Path] = typer.Option(
        None, help="a compiled classifier (memcollab compile --program classifier)"
    ),
    solver_program: Optional[Path] = typer.Option(None, help="a compiled solver program (JSON)"),
    verify_memory: bool = VERIFY,
    verify_tasks: int = VERIFY_TASKS,
    distill_examples: bool = EXAMPLES,
    **run: Any,
) -> None:
    """The main job: build a shared memory with two agents, then evaluate agents with and without it.

    Defaults: qwen2.5-coder-0.5b (weak) and qwen2.5-coder-1.5b (strong) build memory on 20 GSM8K
    train tasks; the weak agent and smollm2-135m (another family) are evaluated on 20 GSM8K test
    tasks with and without the memory.
    """
    cfg = _config(
        **run,
        benchmark=benchmark,
        build_limit=build_limit,
        eval_limit=eval_limit,
        build_ids=build_ids,
        eval_ids=eval_ids,
        sample=sample,
        seed=seed,
        build_agents=_csv(build_agents),
        eval_agents=_csv(eval_agents),
        distiller=distiller,
        classifier=classifier,
        k=k,
        max_turns=max_turns,
        samples=samples,
        gold_categories=gold_categories,
        classifier_program=classifier_program,
        solver_program=solver_program,
        verify_memory=verify_memory,
        verify_tasks=verify_tasks,
        distill_examples=distill_examples,
    )
    summaries, exp = run_experiment(cfg, name="run")
    print_results(summaries, title=f"MemCollab on {benchmark}: accuracy without and with shared memory")
    times = ", ".join(f"{k} {v:.0f}s" for k, v in exp.steps.totals().items())
    console.print(f"step times (every invocation of this run dir; read-back steps add nothing): {times}")
    console.print(f"results: {cfg.run_dir / 'summary.json'}; memory: {exp.store.path}", markup=False)


def run_experiment(cfg, name: str):
    """Validate, then build memory and evaluate with and without it, in one MLflow run.

    Returns (summaries, experiment). Every split, agent and path is checked before the run directory
    exists or any LM is called.
    """
    from memcollab.experiments.preflight import preflight
    from memcollab.experiments.runner import Experiment

    plan = preflight(cfg, build=True, evaluate=True, announce=err.print)
    with Experiment(cfg, plan) as exp:
        exp.ensure_agents(list(plan.agents))
        countdown = _countdown(cfg, exp, n_build=len(plan.tasks["build"]), n_eval=len(plan.tasks["eval"]))
        with exp.tracker.run(name, params=cfg.model_dump(mode="json"), tags={"command": name}):
            report = exp.build_memory()
            print_build(report, len(exp.store))
            on_step = _announce_time_left(countdown)
            if on_step is not None:
                on_step(exp.steps.timings.get("build_s", 0.0))
            summaries = exp.evaluate(cfg.eval_agents, on_step=on_step)
            exp.write_summary(
                {
                    "pairs": len(report.pairs),
                    "constraints_proposed": report.proposed,
                    "constraints_unverified": report.unverified,
                    "build_lm_errors": report.lm_errors,
                }
            )
    return summaries, exp


def _countdown(cfg, exp, n_build: int, n_eval: int):
    """Print the up-front time estimate; return a Countdown over the run's phases (None: no estimate here)."""
    from memcollab.experiments.estimate import Countdown, estimate_seconds, eval_step_seconds, load_throughput

    figures = load_throughput()
    estimate = estimate_seconds(cfg, exp.agents, n_build=n_build, n_eval=n_eval, throughput=figures)
    if not estimate:
        return None
    err.print(f"estimated time: about {estimate / 60:.0f} min (from measured tokens/s; cached calls are free)")
    build = estimate_seconds(cfg, exp.agents, n_build=n_build, n_eval=0, throughput=figures) or 0.0
    per_agent = [eval_step_seconds(cfg, exp.agents, agent, n_eval, figures) or 0.0 for agent in cfg.eval_agents]
    return Countdown([build, *(seconds for seconds in per_agent for _condition in (False, True))])


def _announce_time_left(countdown):
    """`on_step(seconds)`: after the build and each evaluation step, the time left corrected by measured speed."""
    if countdown is None:
        return None

    def on_step(seconds: float) -> None:
        left = countdown.finished(seconds)
        if left is not None and left > 0:
            err.print(f"time left: about {max(1, round(left / 60))} min (corrected by this run's measured speed)")

    return on_step


@with_run_options
def build_memory_command(
    benchmark: str = typer.Option("gsm8k", help=BENCH_HELP),
    agents: str = typer.Option("weak,strong", help="agents that solve the build tasks"),
    limit: int = typer.Option(20, help="number of build tasks"),
    ids: Optional[str] = typer.Option(None, "--ids", help="build tasks by id: " + IDS_HELP),
    sample: bool = SAMPLE,
    seed: int = SEED,
    distiller: Optional[str] = typer.Option(None, help="distilling agent (default: last of --agents)"),
    classifier: Optional[str] = typer.Option(None, help="classifying agent (default: the distiller)"),
    samples: int = typer.Option(0, help="extra sampled attempts for tasks without a contrast"),
    verify_memory: bool = VERIFY,
    verify_tasks: int = VERIFY_TASKS,
    distill_examples: bool = EXAMPLES,
    memory: Optional[Path] = typer.Option(None, help="memory file to write (default: <run-dir>/memory.sqlite)"),
    **run: Any,
) -> None:
    """Build (or extend) a shared memory from contrast pairs of the given agents."""
    from memcollab.experiments.preflight import preflight
    from memcollab.experiments.runner import Experiment

    cfg = _config(
        **run,
        benchmark=benchmark,
        build_agents=_csv(agents),
        build_limit=limit,
        build_ids=ids,
        sample=sample,
        seed=seed,
        distiller=distiller,
        classifier=classifier,
        samples=samples,
        memory_path=memory,
        verify_memory=verify_memory,
        verify_tasks=verify_tasks,
        distill_examples=distill_examples,
    )
    plan = preflight(cfg, build=True, evaluate=False, announce=err.print)
    with Experiment(cfg, plan) as exp:
        with exp.tracker.run("build-memory", params=cfg.model_dump(mode="json"), tags={"command": "build-memory"}):
            report = exp.build_memory()
        print_build(report, len(exp.store))
        console.print(f"memory: {exp.store.path}", markup=False)


@with_run_options
def evaluate_command(
    benchmark: str = typer.Option("gsm8k", help=BENCH_HELP),
    agent: str = typer.Option("weak", help="agent(s) to evaluate, comma-separated"),
    memory: Optional[Path] = typer.Option(None, help="memory file; omit to evaluate without memory"),
    limit: int = typer.Option(20, help="number of evaluation tasks"),
    ids: Optional[str] = typer.Option(None, "--ids", help="evaluation tasks by id: " + IDS_HELP),
    sample: bool = SAMPLE,
    seed: int = SEED,
    k: int = typer.Option(3, help="memories retrieved per task"),
    baseline: bool = typer.Option(True, help="with --memory, also evaluate without memory"),
    classifier: Optional[str] = typer.Option(None, help="classifying agent (default: the evaluated agent)"),
    gold_categories: bool = typer.Option(False),
    fallback: str = typer.Option("none", help="too few memories in the category: none | domain | all"),
    allow_overlap: bool = typer.Option(False, help="allow evaluation tasks that are in the memory's provenance"),
    max_turns: int = typer.Option(3),
    **run: Any,
) -> None:
    """Evaluate agents on a benchmark's evaluation split, with a memory file and/or without."""
    from memcollab.errors import ConfigError
    from memcollab.experiments.preflight import preflight
    from memcollab.experiments.runner import Experiment

    if memory is not None and not memory.is_file():
        raise ConfigError(f"memory file not found: {memory}")
    names = _csv(agent)
    if not names:
        raise ConfigError("--agent names no agent; give one or more, comma-separated")
    cfg = _config(
        **run,
        benchmark=benchmark,
        eval_agents=names,
        eval_limit=limit,
        eval_ids=ids,
        sample=sample,
        seed=seed,
        k=k,
        classifier=classifier or names[0],
        gold_categories=gold_categories,
        fallback=fallback,
        allow_overlap=allow_overlap,
        max_turns=max_turns,
        memory_path=memory or Path(":memory:"),
        build_agents=[],
    )
    conditions = (False,) if memory is None else ((False, True) if baseline else (True,))
    plan = preflight(cfg, build=False, evaluate=True, announce=err.print)
    with Experiment(cfg, plan) as exp:
        with exp.tracker.run("evaluate", params=cfg.model_dump(mode="json"), tags={"command": "evaluate"}):
            summaries = exp.evaluate(names, conditions)
            exp.write_summary()
    print_results(summaries, title=f"{benchmark} evaluation")


def experiment_command(
    config: Path = typer.Argument(
        ..., help="YAML file: RunConfig fields, or a grid (with `cells:`; see configs/experiments/grid.yaml)"
    ),
    run_dir: Optional[Path] = typer.Option(None, help="override the config's run_dir"),
    tracking_uri: Optional[str] = TRACKING_URI,
    max_errors: Optional[int] = typer.Option(
        None,
        "--max-errors",
        min=0,
        help="override the config's max_errors (LM calls that may fail after retries before a step stops; default 10)",
    ),
    store_url: Optional[str] = typer.Option(
        None, "--store-url", help="override the config's store_url: " + STORE_URL_HELP
    ),
    executor: str = typer.Option(
        "local", "--executor", help="a grid's solves: local (threads) or ray (see `grid --help`)"
    ),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="with --executor ray: a running cluster to join (see `grid --help`)"
    ),
) -> None:
    """Run a whole experiment (build memory + evaluate) from a YAML configuration, or a grid of them.

    Every field is checked first: a misspelt field, an unknown benchmark or fallback is one line, before any LM call.
    """
    from memcollab.errors import ConfigError
    from memcollab.experiments.config import load_config
    from memcollab.experiments.grid_config import is_grid_config

    if config.is_file() and is_grid_config(config):  # paired comparisons of memory methods (`memcollab grid`)
        from memcollab.cli.grid import grid_command

        grid_command(
            config,
            run_dir=run_dir,
            tracking_uri=tracking_uri,
            workers=None,
            max_errors=max_errors,
            dry_run=False,
            executor=executor,
            ray_address=ray_address,
            store_url=store_url,
        )
        return
    if executor != "local" or ray_address is not None:
        raise ConfigError(f"--executor and --ray-address are for grids (a YAML with cells:); {config} is a single run")
    cfg = load_config(config, run_dir=run_dir, tracking_uri=tracking_uri, max_errors=max_errors, store_url=store_url)
    summaries, _ = run_experiment(cfg, name=config.stem)
    print_results(summaries, title=f"{config.stem}: accuracy without and with shared memory")


def compile_command(
    program: str = typer.Option("solver", help="solver | classifier"),
    optimizer: str = typer.Option(
        "labeled",
        help="labeled (LabeledFewShot: the benchmark's reference solutions) | bootstrap (BootstrapFewShot: "
        "the agent's own graded-correct traces)",
    ),
    benchmark: str = typer.Option(
        "gsm8k", help="solver: any benchmark; classifier: one with gold categories (math500)"
    ),
    agent: str = typer.Option("weak", help="the agent that runs the program (bootstrap and the dev comparison)"),
    train: int = typer.Option(3, help="demo candidates: the first N tasks of the build split"),
    dev: int = typer.Option(
        40,
        help="tasks that compare zero-shot and compiled (solver: the build split after the train tasks; "
        "classifier: the evaluation split); 0 skips the comparison",
    ),
    out: Optional[Path] = typer.Option(
        None, help="compiled program file (default: <run-dir>/<program>_<optimizer>.json)"
    ),
    agents_file: Optional[Path] = AGENTS_FILE,
    workers: int = WORKERS,
    run_dir: Path = typer.Option(Path("runs/compile")),
    data_dir: Optional[Path] = DATA_DIR,
    backend: Optional[str] = BACKEND,
    tracking_uri: Optional[str] = TRACKING_URI,
    track: bool = TRACK,
    cache: bool = CACHE,
) -> None:
    """Compile a DSPy program (the solver or the task classifier) and compare it with the zero-shot one.

    Use the result with `memcollab run --solver-program FILE` (or `--classifier-program FILE`): memory and
    no-memory conditions of a run always share the same solver program.
    """
    from memcollab.errors import ConfigError
    from memcollab.experiments.preflight import Plan, check_agents, check_run_dir, check_sandbox
    from memcollab.experiments.runner import Experiment
    from memcollab.programs.compile import OPTIMIZERS

    if program not in ("solver", "classifier"):
        raise ConfigError(f"unknown program {program!r}; choose one of: solver, classifier")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    cfg = _config(
        benchmark=benchmark,
        agents_file=agents_file,
        workers=workers,
        run_dir=run_dir,
        data_dir=data_dir,
        backend=backend,
        tracking_uri=tracking_uri,
        track=track,
        cache=cache,
        memory_path=Path(":memory:"),
        build_agents=[],
        eval_agents=[],
    )
    out = out or run_dir / f"{program}_{optimizer}.json"
    check_run_dir(cfg.run_dir)
    check_sandbox([benchmark])  # the solver's metric grades code on a code benchmark
    plan = Plan(cfg, agents=check_agents([agent], cfg, announce=err.print))  # before the run dir exists
    with Experiment(cfg, plan) as exp:
        params = {
            **cfg.model_dump(mode="json"),
            "program": program,
            "optimizer": optimizer,
            "agent": agent,
            "train": train,
            "dev": dev,
        }
        with exp.tracker.run(f"compile-{program}", params=params, tags={"command": "compile"}):
            compile_fn = exp.compile_solver if program == "solver" else exp.compile_classifier
            metrics = compile_fn(agent, optimizer, train, dev, out)
    if metrics.get(f"{program}.dev"):
        console.print(
            f"{program} accuracy on {int(metrics[f'{program}.dev'])} held-out tasks: zero-shot "
            f"{metrics[f'{program}.zero_shot.accuracy']:.1%}, {optimizer} {metrics[f'{program}.{optimizer}.accuracy']:.1%}",
            markup=False,
        )
    console.print(f"compiled program: {out}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("build-memory")(build_memory_command)
    app.command("evaluate")(evaluate_command)
    app.command("experiment")(experiment_command)
    app.command("compile")(compile_command)
