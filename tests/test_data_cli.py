"""`memcollab data show|check` end to end, in a subprocess, as a user runs them.

The one-line `error:` output is produced by `memcollab.cli.main`, so these
tests run the console script's `main` in a subprocess rather than typer's CliRunner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: The `memcollab` console script, run by this interpreter (what `[project.scripts]` installs).
MEMCOLLAB = [sys.executable, "-c", "import sys; from memcollab.cli import main; sys.argv[0] = 'memcollab'; main()"]


def _cli(*args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEMCOLLAB_DATA_DIR"}
    if data_dir is not None:
        env["MEMCOLLAB_DATA_DIR"] = str(data_dir)
    env["COLUMNS"] = "200"
    return subprocess.run([*MEMCOLLAB, *args], check=False, capture_output=True, text=True, env=env, timeout=300)


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    for needle in needles:
        assert needle in lines[0], lines[0]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    _write(
        tmp_path / "gsm8k/test.jsonl",
        [
            {"question": "One plus one?", "answer": "1+1=2\n#### 2"},
            {"question": "Two times 1,000?", "answer": "2*1000=2000\n#### 2,000"},
        ],
    )
    _write(
        tmp_path / "humaneval/HumanEval.jsonl",
        [
            {
                "task_id": f"HumanEval/{i}",
                "prompt": 'def inc(x):\n    """Add one."""\n',
                "canonical_solution": body,
                "test": "def check(candidate):\n    assert candidate(1) == 2\n",
                "entry_point": "inc",
            }
            for i, body in enumerate(["    return x + 1\n", "    return x + 2\n"])
        ],
    )
    return tmp_path


def test_show_prints_tasks(data_dir: Path) -> None:
    """GSM8K ids are 1-based line numbers: id 2 is the second line of test.jsonl."""
    result = _cli("data", "show", "gsm8k", "--ids", "2", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "gsm8k/test/2" in result.stdout and "Two times 1,000?" in result.stdout and "2000" in result.stdout
    assert "gsm8k/test/1 " not in result.stdout and "1 task(s)" in result.stdout


def test_show_takes_ranges_and_ids_win_over_limit(data_dir: Path) -> None:
    result = _cli("data", "show", "humaneval", "--ids", "0-1", "--limit", "1", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "humaneval/HumanEval/0" in result.stdout and "humaneval/HumanEval/1" in result.stdout
    assert "2 task(s)" in result.stdout
    _assert_one_line_error(
        _cli("data", "show", "gsm8k", "--ids", "1-2", "--sample", "1", data_dir=data_dir), "--ids and --sample"
    )
    _assert_one_line_error(
        _cli("data", "show", "gsm8k", "--ids", "1-5", data_dir=data_dir),
        "unknown task id(s) in gsm8k/test: 3-5",
        "numeric ids run from 1 to 2",
    )


def test_missing_file_is_one_line(data_dir: Path) -> None:
    _assert_one_line_error(_cli("data", "show", "mbpp", "--data-dir", str(data_dir)), "missing data file", "mbpp.jsonl")


def test_malformed_line_names_file_and_line(data_dir: Path) -> None:
    path = data_dir / "gsm8k/test.jsonl"
    path.write_text(path.read_text() + '{"question": "broken", "answer": \n')
    result = _cli("data", "show", "gsm8k", "--data-dir", str(data_dir))
    _assert_one_line_error(result, "malformed JSON", str(path), "line 3")


def test_unknown_benchmark_is_one_line(data_dir: Path) -> None:
    _assert_one_line_error(
        _cli("data", "show", "imagenet", "--data-dir", str(data_dir)),
        "unknown benchmark 'imagenet'; available: math500, gsm8k, humaneval, mbpp",
    )
    _assert_one_line_error(_cli("data", "check", "--benchmark", "imagenet", "--data-dir", str(data_dir)), "imagenet")


def test_unknown_split_and_ids_via_env_data_dir(data_dir: Path) -> None:
    _assert_one_line_error(_cli("data", "show", "gsm8k", "--split", "dev", data_dir=data_dir), "unknown split 'dev'")
    _assert_one_line_error(_cli("data", "show", "gsm8k", "--ids", "7", data_dir=data_dir), "unknown task id(s)", "7")


def test_check_passes_and_reports_counts(data_dir: Path) -> None:
    _write(data_dir / "gsm8k/train.jsonl", [{"question": "Three?", "answer": "#### 3"}])
    result = _cli("data", "check", "--benchmark", "gsm8k", "--data-dir", str(data_dir), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gsm8k/test: 2/2 reference solutions graded correct" in result.stdout
    assert "gsm8k/train: 1/1 reference solutions graded correct" in result.stdout


def test_check_fails_with_the_failing_ids(data_dir: Path) -> None:
    result = _cli("data", "check", "-b", "humaneval", "--data-dir", str(data_dir), "--no-progress")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "humaneval/test: 1/2 reference solutions graded correct" in result.stdout
    assert "failed humaneval/HumanEval/1: assertion_failure" in result.stdout
    assert "wall time:" in result.stdout


def _trajectory(task, outputs: list[tuple[str, bool, str]]) -> dict:
    """A stored trajectory payload whose turns are (output, stored correctness, extracted)."""
    from memcollab.records import Trajectory, Turn, Verdict

    turns = [Turn(output=o, verdict=Verdict(correct=c, extracted=x)) for o, c, x in outputs]
    return Trajectory(task_id=task.id, benchmark=task.benchmark, agent="weak", turns=turns).model_dump(mode="json")


def test_regrade_finds_the_one_turn_whose_stored_verdict_is_wrong(data_dir: Path, tmp_path: Path) -> None:
    """Five stored turns (code run in the real sandbox, math boxed as the solver graded it), one of them stored
    wrong: `data regrade` names that one and exits 1; once it is stored right, 0."""
    from memcollab.benchmarks import load_tasks
    from memcollab.memory.results import ResultStore

    first, second = load_tasks("humaneval", data_dir=data_dir)
    gsm8k = load_tasks("gsm8k", "test", data_dir=data_dir)[0]
    right, wrong = "def inc(x):\n    return x + 1\n", "def inc(x):\n    return x + 2\n"
    store = tmp_path / "results.sqlite"
    with ResultStore(store) as results:
        results.put(
            "a", "trajectory", first.id, "weak", _trajectory(first, [(wrong, False, wrong), (right, True, right)])
        )
        # a math turn stores the extracted answer, graded boxed: "n - 2" is wrong, though its last number is right
        results.put("b", "trajectory", gsm8k.id, "weak", _trajectory(gsm8k, [("2", True, "2")]))
        results.put("c", "trajectory", gsm8k.id, "strong", _trajectory(gsm8k, [("n - 2", False, "n - 2")]))
        results.put("d", "trajectory", second.id, "weak", _trajectory(second, [(right, False, right)]))
        results.put("e", "reflect", second.id, "weak", {"not": "a trajectory"})
    result = _cli("data", "regrade", str(store), "--no-progress", data_dir=data_dir)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("5 turns of 4 trajectories regraded (gsm8k 2, humaneval 3; sandbox: "), lines[0]
    assert lines[0].endswith(": 4 agree with the stored verdict, 1 do not"), lines[0]
    assert lines[1] == f"  {second.id} turn 1: stored wrong (no error type), now correct (key d)"
    with ResultStore(store) as results:
        results.put("d", "trajectory", second.id, "weak", _trajectory(second, [(right, True, right)]))
    assert _cli("data", "regrade", str(store), "--no-progress", data_dir=data_dir).returncode == 0
    _assert_one_line_error(_cli("data", "regrade", str(tmp_path / "none.sqlite")), "no result store at")
