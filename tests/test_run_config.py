"""A run is validated before it spends anything: its config, every split it reads, its agents and its run dir.

The CLI cases run the console script's `main` in a subprocess, as a user does: the one-line
`error:` output comes from `memcollab.cli.main`. Agents are litellm agents on localhost: a
closed port (any LM call would fail, and the check must say so first) or a tiny real HTTP
server that answers the reachability check and would reject any completion.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dspy.utils.dummies import DummyLM

from memcollab.errors import ConfigError, DataError
from memcollab.experiments.config import RunConfig, load_config, make_config
from memcollab.experiments.preflight import preflight, safe_name
from memcollab.experiments.runner import Experiment
from memcollab.paths import default_data_dir
from memcollab.programs.pipeline import Agent

REAL = default_data_dir()

#: The `memcollab` console script, run by this interpreter (what `[project.scripts]` installs).
MEMCOLLAB = [sys.executable, "-c", "import sys; from memcollab.cli import main; sys.argv[0] = 'memcollab'; main()"]


# --------------------------------------------------------------------------- helpers


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEMCOLLAB_DATA_DIR"}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [*MEMCOLLAB, *args], check=False, capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def _one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _agents_file(path: Path, api_base: str) -> Path:
    """Three litellm agents on one endpoint: no model, no key, nothing else needed to check them."""
    agents = "".join(
        f"  - {{name: {name}, backend: litellm, model: openai/{name}, api_base: '{api_base}'}}\n"
        for name in ("weak", "strong", "other")
    )
    path.write_text("agents:\n" + agents)
    return path


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """GSM8K train and test files (copies of the real ones when present), nothing else."""
    target = tmp_path / "data"
    if REAL is not None and (REAL / "gsm8k/test.jsonl").is_file():
        (target / "gsm8k").mkdir(parents=True)
        for split in ("train", "test"):
            shutil.copy(REAL / f"gsm8k/{split}.jsonl", target / f"gsm8k/{split}.jsonl")
    else:
        for split in ("train", "test"):
            _write(
                target / f"gsm8k/{split}.jsonl",
                [{"question": f"{split} {i}?", "answer": f"#### {i}"} for i in range(1, 41)],
            )
    return target


@pytest.fixture()
def endpoint():
    """A real HTTP server on localhost that answers every request with 404: reachable, but no LM."""

    class NotAnLM(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        do_POST = do_GET

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotAnLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def _contents(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


# --------------------------------------------------------------------------- RunConfig


def test_a_typo_names_the_field_and_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError) as info:
        make_config("invalid experiment config x.yaml", verify_memroy=True)
    message = str(info.value)
    assert "unknown field 'verify_memroy' (did you mean 'verify_memory'?)" in message
    assert "allowed fields: benchmark," in message and "\n" not in message


@pytest.mark.parametrize(
    ("fields", "needles"),
    [
        ({"benchmark": "imagenet"}, ["benchmark:", "'math500'", "'mbpp'", "'imagenet'"]),
        ({"fallback": "nearest"}, ["fallback:", "'none'", "'domain'", "'all'"]),
        ({"backend": "gpu"}, ["backend:", "'auto'", "'server'"]),
        ({"workers": 0}, ["workers:", "greater than or equal to 1"]),
        ({"eval_ids": "9-1"}, ["eval_ids:", "runs backwards"]),
        ({"sample": True, "build_ids": "1-10"}, ["use one of them"]),
    ],
)
def test_bad_values_are_one_line_naming_field_and_allowed_values(fields, needles) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(**fields)
    assert "\n" not in str(info.value)
    for needle in needles:
        assert needle in str(info.value)


def test_ids_win_over_limits_and_the_defaults_still_load(tmp_path: Path) -> None:
    cfg = RunConfig(build_ids="1-100", eval_ids=" 1001-1100, 1205", eval_limit=5)
    assert cfg.selection("build") == {"ids": "1-100"} and cfg.selection("eval") == {"ids": "1001-1100,1205"}
    assert RunConfig(sample=True, seed=3).selection("eval") == {"sample": 20, "seed": 3}
    from memcollab.experiments.grid_config import is_grid_config, load_grid_config

    for path in sorted(Path(__file__).resolve().parents[1].glob("configs/experiments/*.yaml")):
        # every committed experiment file is valid: a grid as a grid, any other as one run
        assert load_grid_config(path).cells if is_grid_config(path) else load_config(path).benchmark, path
    (tmp_path / "list.yaml").write_text("- benchmark: gsm8k\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    ("yaml_text", "needles"),
    [
        ("benchmark: gsm8k\nverify_memroy: true\n", ["verify_memroy", "did you mean 'verify_memory'"]),
        ("benchmark: gsm9k\n", ["benchmark:", "'gsm8k'", "'gsm9k'"]),
        ("fallback: nearest\n", ["fallback:", "'domain'"]),
        ("benchmark: [gsm8k\n", ["invalid YAML at line"]),
    ],
)
def test_experiment_command_refuses_a_bad_config_before_anything(tmp_path: Path, yaml_text: str, needles) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text + f"run_dir: {tmp_path / 'run'}\n")
    _one_line_error(_cli("experiment", str(config), cwd=tmp_path), "bad.yaml", *needles)
    assert _contents(tmp_path) == {"bad.yaml"}, "nothing may be created"


# --------------------------------------------------------------------------- validate before spending


def test_a_malformed_eval_line_fails_before_any_lm_call_and_leaves_nothing(tmp_path: Path, data_dir: Path) -> None:
    """Line 500 of the test file is broken while only tasks 1-20 would be evaluated: the run refuses to start."""
    test_file = data_dir / "gsm8k/test.jsonl"
    lines = test_file.read_text().splitlines(keepends=True)
    lines = lines + ['{"question": "q"}\n'] * max(0, 500 - len(lines))
    lines[499] = '{"question": "broken", "answer": \n'
    test_file.write_text("".join(lines))
    agents = _agents_file(tmp_path / "agents.yaml", f"http://127.0.0.1:{_closed_port()}/v1")
    before = _contents(tmp_path)
    result = _cli("run", "--data-dir", str(data_dir), "--agents-file", str(agents), "--run-dir", "run", cwd=tmp_path)
    _one_line_error(result, "malformed JSON", str(test_file), "line 500")
    assert _contents(tmp_path) == before, "no run dir, store, cache or MLflow file may be left behind"


def test_an_unreachable_agent_fails_before_the_run_dir_exists(tmp_path: Path, data_dir: Path) -> None:
    port = _closed_port()
    agents = _agents_file(tmp_path / "agents.yaml", f"http://127.0.0.1:{port}/v1")
    before = _contents(tmp_path)
    result = _cli(
        "run",
        "--data-dir",
        str(data_dir),
        "--agents-file",
        str(agents),
        "--run-dir",
        "run",
        "--build-ids",
        "1-3",
        "--eval-ids",
        "1-3",
        cwd=tmp_path,
    )
    _one_line_error(result, "agent 'weak'", f"127.0.0.1:{port}", "unreachable")
    assert _contents(tmp_path) == before


def test_run_dir_that_is_a_file_and_ids_with_sample_are_one_line(tmp_path: Path, data_dir: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    result = _cli("run", "--data-dir", str(data_dir), "--run-dir", "taken", cwd=tmp_path)
    _one_line_error(result, "--run-dir taken", "is a file, not a directory")
    result = _cli("evaluate", "--data-dir", str(data_dir), "--ids", "1-5", "--sample", "--run-dir", "r", cwd=tmp_path)
    _one_line_error(result, "use one of them")
    result = _cli("run", "--data-dir", str(data_dir), "--eval-ids", "1-99999", "--run-dir", "r", cwd=tmp_path)
    _one_line_error(result, "unknown task id(s) in gsm8k/test")
    assert (tmp_path / "taken").read_text() == "a file" and not (tmp_path / "r").exists()


def test_preflight_loads_every_split_and_checks_agents_without_writing(
    tmp_path: Path, data_dir: Path, endpoint
) -> None:
    cfg = RunConfig(
        data_dir=data_dir,
        agents_file=_agents_file(tmp_path / "agents.yaml", endpoint),
        run_dir=tmp_path / "run",
        build_ids="1-3",
        eval_ids="5,7-8",
        track=False,
    )
    plan = preflight(cfg)
    assert [t.id for t in plan.tasks["build"]] == ["gsm8k/train/1", "gsm8k/train/2", "gsm8k/train/3"]
    assert [t.id for t in plan.tasks["eval"]] == ["gsm8k/test/5", "gsm8k/test/7", "gsm8k/test/8"]
    assert set(plan.agents) == {"weak", "strong", "other"} and plan.agents["weak"].api_base == endpoint
    assert not cfg.run_dir.exists()

    (data_dir / "gsm8k/train.jsonl").write_text('{"question": "no answer"}\n')
    with pytest.raises(DataError, match="lacks the field 'answer'"):
        preflight(cfg)
    assert not cfg.run_dir.exists()


# --------------------------------------------------------------------------- result files


def test_inline_agent_names_make_flat_result_files(tmp_path: Path) -> None:
    """An inline agent spec (with ':' and '/') names its result file without creating subdirectories."""
    data = tmp_path / "data"
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(1, 4)]
    _write(data / "gsm8k/test.jsonl", rows)
    _write(data / "gsm8k/train.jsonl", rows)
    name = "litellm:openai/gpt-4o-mini"
    cfg = RunConfig(
        data_dir=data,
        run_dir=tmp_path / "run",
        eval_ids="1-2",
        build_agents=[],
        eval_agents=[name],
        classifier=name,
        memory_path=Path(":memory:"),
        track=False,
        cache=False,
        workers=1,
    )
    answers = {f"What is {i} + {i}?": {"reasoning": "add", "answer": str(2 * i)} for i in range(1, 4)}
    with Experiment(cfg) as exp:
        exp.agents = {name: Agent(name=name, lm=DummyLM(answers), config={"name": name, "model": "dummy"})}
        (summary,) = exp.evaluate([name], conditions=(False,))
    assert summary.n == 2
    written = [p for p in cfg.run_dir.iterdir() if p.name.startswith("eval_")]
    assert [p.name for p in written] == [f"eval_{safe_name(name)}_no_memory.jsonl"] and written[0].is_file()
    assert safe_name(name).startswith("litellm_openai_gpt-4o-mini-") and safe_name("weak") == "weak"
    assert safe_name("a/b") != safe_name("a:b")
    assert not [p for p in cfg.run_dir.rglob("*") if p.is_dir() and p.name.startswith("eval_")]


def test_memory_overlap_and_missing_programs_fail_in_preflight(tmp_path: Path, data_dir: Path) -> None:
    """An existing memory built from an evaluation task, or a missing compiled program, stops the run up front."""
    from memcollab.errors import OverlapError
    from memcollab.memory import MemoryStore
    from memcollab.records import MemoryEntry, Provenance

    memory = tmp_path / "memory.sqlite"
    with MemoryStore(memory) as store:
        store.add(
            MemoryEntry(
                when="a total is asked",
                enforce="add every part",
                avoid="dropping a part",
                category="multi_step",
                error_type="other",
                provenance=Provenance(task_ids=["gsm8k/test/2"]),
            )
        )
    base = dict(data_dir=data_dir, run_dir=tmp_path / "run", eval_ids="1-3", build_agents=[], eval_agents=[])
    with pytest.raises(OverlapError, match="gsm8k/test/2"):
        preflight(RunConfig(**base, memory_path=memory), build=False)
    assert preflight(RunConfig(**base, memory_path=memory, allow_overlap=True), build=False).tasks["eval"]
    with pytest.raises(ConfigError, match="solver_program: file not found"):
        preflight(RunConfig(**base, solver_program=tmp_path / "solver.json"), build=False)
    assert not (tmp_path / "run").exists()
