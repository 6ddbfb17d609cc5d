"""`memcollab show-prompt`: exactly what a model receives for one task, before any number is trusted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

ADAPTERS = ("natural", "json", "chat")


def show_prompt_command(
    benchmark: str = typer.Option("gsm8k", help="gsm8k | math500 | mbpp | humaneval"),
    task_id: str = typer.Option("1", "--id", help="a task id or its tail (see `memcollab data show`)"),
    split: Optional[str] = typer.Option(None, help="split (default: the benchmark's evaluation split)"),
    adapter: str = typer.Option("natural", help="natural (default for local models) | json | chat"),
    rule: list[str] = typer.Option([], "--rule", help="a memory rule to show as guidance (repeatable)"),
    previous: Optional[Path] = typer.Option(None, help="code tasks: a file with the previous attempt (a later turn)"),
    feedback: str = typer.Option("", help="code tasks: the test feedback of the previous attempt"),
    solver_program: Optional[Path] = typer.Option(None, help="a compiled solver (its demos are shown too)"),
    template: Optional[str] = typer.Option(
        None,
        help="an embedded model (e.g. qwen2.5-coder-0.5b): also render the messages through its chat template "
        "on llama-server, the exact text the model reads",
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="benchmark data directory"),
) -> None:
    """Print the solver's chat messages for one task (and, with --template, the model's templated text)."""
    import dspy

    from memcollab.benchmarks import load_tasks
    from memcollab.errors import ConfigError
    from memcollab.lm.adapters import NaturalAdapter
    from memcollab.programs.prompts import solver_messages
    from memcollab.programs.solver import Solver, render_guidance

    if adapter not in ADAPTERS:
        raise ConfigError(f"unknown adapter {adapter!r}; choose one of: {', '.join(ADAPTERS)}")
    if previous is not None and not previous.is_file():
        raise ConfigError(f"previous attempt file not found: {previous}")
    [task] = load_tasks(benchmark, split=split, data_dir=data_dir, ids=[task_id])
    solver = Solver()
    if solver_program is not None:
        if not solver_program.is_file():
            raise ConfigError(f"solver program not found: {solver_program}")
        solver.load(str(solver_program))
    chosen = {"natural": NaturalAdapter, "json": dspy.JSONAdapter, "chat": dspy.ChatAdapter}[adapter]()
    messages = solver_messages(
        task,
        chosen,
        guidance=render_guidance(rule),
        solver=solver,
        previous_attempt=previous.read_text() if previous else "",
        feedback=feedback,
    )
    for message in messages:
        typer.echo(f"--- {message['role']} ---\n{message['content']}\n")
    if template:
        typer.echo(f"--- {template}: chat template applied by llama-server ---\n{apply_template(template, messages)}")


def apply_template(model: str, messages: list[dict]) -> str:
    """The prompt text llama-server builds from `messages` with the model's own chat template."""
    import urllib.request

    from memcollab.lm.config import resolve_agent
    from memcollab.lm.server import server_lm

    lm = server_lm(resolve_agent(f"server:{model}"))
    root = lm.kwargs["api_base"].removesuffix("/v1")
    request = urllib.request.Request(
        root + "/apply-template",
        data=json.dumps({"messages": messages}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["prompt"]
