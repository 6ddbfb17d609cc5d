"""Benchmark loaders: fields, ids, splits and selection on small synthetic files; counts on the real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from memcollab.benchmarks import BENCHMARKS, get_benchmark, load_tasks, parse_ids, taxonomy_for
from memcollab.benchmarks.loaders import math500_split, mbpp_entry_point
from memcollab.errors import DataError
from memcollab.paths import default_data_dir

SUBJECTS = ["Algebra", "Counting & Probability", "Intermediate Algebra", "Number Theory"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """A tiny data directory with the real layout and field names."""
    math_rows = [
        {
            "problem": f"What is {i}+1?",
            "solution": f"It is $\\boxed{{{i + 1}}}$.",
            "answer": str(i + 1),
            "subject": SUBJECTS[i % 4],
            "level": 1 + i % 5,
            "unique_id": f"test/{SUBJECTS[i % 4].lower().replace(' & ', '_and_').replace(' ', '_')}/{i}.json",
        }
        for i in range(20)
    ]
    _write_jsonl(tmp_path / "math500/test.jsonl", math_rows)
    for split, n in (("train", 4), ("test", 3)):
        rows = [{"question": f"q{i}?", "answer": f"work <<1+1=2>>\n#### {1000 * (i + 1):,}"} for i in range(n)]
        _write_jsonl(tmp_path / f"gsm8k/{split}.jsonl", rows)
    _write_jsonl(
        tmp_path / "humaneval/HumanEval.jsonl",
        [
            {
                "task_id": "HumanEval/0",
                "prompt": 'def inc(x):\n    """Add one."""\n',
                "canonical_solution": "    return x + 1\n",
                "test": "def check(candidate):\n    assert candidate(1) == 2\n",
                "entry_point": "inc",
            }
        ],
    )
    mbpp_rows = [
        {
            "task_id": tid,
            "text": f"Write a function number {tid}.",
            "code": f"def f{tid}(x):\r\n    return x",
            "test_list": [f"assert f{tid}(1) == 1", f"assert f{tid}(2) == 2"],
            "test_setup_code": "import math" if tid == 601 else "",
            "challenge_test_list": [],
        }
        for tid in (1, 11, 12, 511, 601, 974)
    ]
    _write_jsonl(tmp_path / "mbpp/mbpp.jsonl", mbpp_rows)
    return tmp_path


def test_math500_fields(data_dir: Path) -> None:
    tasks = load_tasks("math500", data_dir=data_dir)
    assert len(tasks) == 20
    t = tasks[1]
    assert t.id == "math500/test/test/counting_and_probability/1.json"
    assert (t.benchmark, t.split, t.kind, t.answer, t.level) == ("math500", "test", "math", "2", 2)
    assert t.category == "counting_and_probability"
    assert "\\boxed{2}" in t.solution and t.prompt == "What is 1+1?"


def test_gsm8k_answer_after_hashes(data_dir: Path) -> None:
    test = load_tasks("gsm8k", "test", data_dir=data_dir)
    train = load_tasks("gsm8k", "train", data_dir=data_dir)
    assert [t.id for t in test] == ["gsm8k/test/1", "gsm8k/test/2", "gsm8k/test/3"]  # 1-based line numbers
    assert len(train) == 4 and train[0].split == "train"
    assert test[1].answer == "2000"  # "#### 2,000" without the separator
    assert test[1].solution.endswith("#### 2,000") and test[1].category == ""


def test_humaneval_tests_call_check(data_dir: Path) -> None:
    (t,) = load_tasks("humaneval", data_dir=data_dir)
    assert t.id == "humaneval/HumanEval/0" and t.kind == "code" and t.entry_point == "inc"
    assert t.tests.rstrip().endswith("check(inc)")
    assert t.solution == t.prompt + "    return x + 1\n"


def test_mbpp_standard_splits_and_prompt(data_dir: Path) -> None:
    by_split = {s: [t.id for t in load_tasks("mbpp", s, data_dir=data_dir)] for s in BENCHMARKS["mbpp"].splits}
    assert by_split == {
        "prompt": ["mbpp/1"],
        "test": ["mbpp/11", "mbpp/12"],
        "validation": ["mbpp/511"],
        "train": ["mbpp/601", "mbpp/974"],
    }
    (t,) = load_tasks("mbpp", "train", data_dir=data_dir, ids=["601"])
    assert t.entry_point == "f601" and t.setup == "import math"
    assert t.prompt.startswith("Write a function number 601.") and "assert f601(1) == 1" in t.prompt
    assert "assert f601(2) == 2" not in t.prompt  # only the first test is shown
    assert t.tests.splitlines() == ["assert f601(1) == 1", "assert f601(2) == 2"]
    assert "\r" not in t.solution


def test_mbpp_entry_point_skips_builtins_unless_defined() -> None:
    assert mbpp_entry_point("assert set(similar([1], [1])) == set([1])") == "similar"
    assert mbpp_entry_point("assert math.isclose(area(2), 4.0)") == "area"
    assert mbpp_entry_point("assert sum(10,15) == 6", code="def sum(a, b):\n    return 6") == "sum"


def test_selection_limit_ids_sample(data_dir: Path) -> None:
    assert [t.id for t in load_tasks("gsm8k", data_dir=data_dir, limit=2)] == ["gsm8k/test/1", "gsm8k/test/2"]
    picked = load_tasks("gsm8k", data_dir=data_dir, ids=["3", "gsm8k/test/1"])
    assert [t.id for t in picked] == ["gsm8k/test/3", "gsm8k/test/1"]
    a = load_tasks("math500", data_dir=data_dir, sample=5, seed=7)
    b = load_tasks("math500", data_dir=data_dir, sample=5, seed=7)
    c = load_tasks("math500", data_dir=data_dir, sample=5, seed=8)
    assert [t.id for t in a] == [t.id for t in b] != [t.id for t in c]


def test_ids_ranges_tails_and_order(data_dir: Path) -> None:
    """Ranges of numeric tails are inclusive, keep the order given, and name each task once."""
    assert [t.id for t in load_tasks("gsm8k", data_dir=data_dir, ids="1-2")] == ["gsm8k/test/1", "gsm8k/test/2"]
    assert [t.id for t in load_tasks("gsm8k", "train", data_dir=data_dir, ids="4,1-2,2")] == [
        "gsm8k/train/4",
        "gsm8k/train/1",
        "gsm8k/train/2",
    ]
    assert [t.id for t in load_tasks("mbpp", "test", data_dir=data_dir, ids="11-12")] == ["mbpp/11", "mbpp/12"]
    assert [t.id for t in load_tasks("humaneval", data_dir=data_dir, ids=["0-0"])] == ["humaneval/HumanEval/0"]
    assert len(load_tasks("gsm8k", data_dir=data_dir, ids="1-3", limit=2)) == 2  # a limit cuts the selection


def test_parse_ids_counts_what_it_names() -> None:
    selection = parse_ids("1001-1100,1205")
    assert selection.size == 101 and str(selection) == "1001-1100,1205"
    assert parse_ids(["1-100"]).size == 100 and parse_ids("HumanEval/3, 7 ,7").size == 2
    with pytest.raises(DataError, match="runs backwards; write 1-9"):
        parse_ids("9-1")


def test_every_spec_is_consistent_and_lookups_are_one_line() -> None:
    """Sources name registered splits; the taxonomy exists."""
    for spec in BENCHMARKS.values():
        for source in (spec.build, spec.eval):
            assert source.split in get_benchmark(source.benchmark).splits
        assert taxonomy_for(spec.name).name == spec.taxonomy
        assert set(spec.check_splits) <= set(spec.splits) and spec.default_split in spec.splits
    assert get_benchmark("HumanEval").build.benchmark == "mbpp"
    assert {get_benchmark(s.eval.benchmark).kind for s in BENCHMARKS.values()} == {"math", "code"}
    with pytest.raises(DataError) as info:
        get_benchmark("imagenet")
    assert str(info.value) == "unknown benchmark 'imagenet'; available: math500, gsm8k, humaneval, mbpp"


def test_math500_split_is_seeded_stratified_and_disjoint(data_dir: Path) -> None:
    tasks = load_tasks("math500", data_dir=data_dir)
    build, evaluation = math500_split(tasks, build_size=8, seed=0)
    again, _ = math500_split(tasks, build_size=8, seed=0)
    assert [t.id for t in build] == [t.id for t in again]
    assert not {t.id for t in build} & {t.id for t in evaluation}
    assert len(build) + len(evaluation) == 20
    assert Counter(t.category for t in build) == {c: 2 for c in Counter(t.category for t in tasks)}
    assert {t.split for t in build} == {"build"} and {t.split for t in evaluation} == {"eval"}


def test_changed_file_is_reread(data_dir: Path) -> None:
    path = data_dir / "gsm8k/test.jsonl"
    assert load_tasks("gsm8k", data_dir=data_dir)[0].answer == "1000"
    _write_jsonl(path, [{"question": "changed?", "answer": "#### 7"}])
    (t,) = load_tasks("gsm8k", data_dir=data_dir)
    assert (t.prompt, t.answer) == ("changed?", "7")


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda d: load_tasks("nope", data_dir=d), "unknown benchmark 'nope'; available: math500, gsm8k"),
        (lambda d: load_tasks("gsm8k", "dev", data_dir=d), "unknown split 'dev'"),
        (lambda d: load_tasks("gsm8k", data_dir=d, ids=["99"]), "unknown task id(s)"),
        (lambda d: load_tasks("gsm8k", data_dir=d, ids="2-5"), "gsm8k/test: 4-5 (numeric ids run from 1 to 3)"),
        (lambda d: load_tasks("gsm8k", data_dir=d, ids="3-1"), "runs backwards"),
        (lambda d: load_tasks("gsm8k", data_dir=d, ids=" , "), "no task ids given"),
        (lambda d: load_tasks("gsm8k", data_dir=d, ids="1-2", sample=1), "--ids and --sample"),
        (lambda d: load_tasks("gsm8k", data_dir=d, sample=50), "larger than"),
        (lambda d: load_tasks("gsm8k", data_dir=d / "missing"), "does not exist"),
    ],
)
def test_selection_errors_are_one_line(data_dir: Path, call, needle: str) -> None:
    with pytest.raises(DataError) as info:
        call(data_dir)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_malformed_line(data_dir: Path) -> None:
    (data_dir / "humaneval/HumanEval.jsonl").unlink()
    with pytest.raises(DataError, match=r"missing data file .*HumanEval\.jsonl"):
        load_tasks("humaneval", data_dir=data_dir)
    path = data_dir / "gsm8k/train.jsonl"
    path.write_text('{"question": "a", "answer": "#### 1"}\n{"question": "b", "answer": \n')
    with pytest.raises(DataError, match=rf"malformed JSON in {path} line 2"):
        load_tasks("gsm8k", "train", data_dir=data_dir)


def test_hub_unreachable_is_a_data_error(tmp_path: Path) -> None:
    """Without a local directory the hub ids are used; offline that must be one DataError line."""
    code = (
        "import memcollab.benchmarks.files as f\n"
        "f.default_data_dir = lambda: None\n"
        "import memcollab.benchmarks as b\n"
        "from memcollab.errors import DataError\n"
        "try:\n    b.load_tasks('gsm8k')\nexcept DataError as e:\n    print('DATAERROR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MEMCOLLAB_DATA_DIR"}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf")  # an empty cache: nothing to fall back on
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert "DATAERROR no local data directory" in out.stdout and "openai/gsm8k" in out.stdout, out.stderr[-2000:]


REAL = default_data_dir()
needs_real = pytest.mark.skipif(REAL is None or not (REAL / "gsm8k").is_dir(), reason="benchmark data not found")


@needs_real
def test_real_data_counts() -> None:
    counts = {
        "math500": len(load_tasks("math500")),
        "gsm8k/test": len(load_tasks("gsm8k", "test")),
        "gsm8k/train": len(load_tasks("gsm8k", "train")),
        "humaneval": len(load_tasks("humaneval")),
        "mbpp": sum(len(load_tasks("mbpp", s)) for s in BENCHMARKS["mbpp"].splits),
    }
    assert counts == {"math500": 500, "gsm8k/test": 1319, "gsm8k/train": 7473, "humaneval": 164, "mbpp": 974}
    assert [len(load_tasks("mbpp", s)) for s in ("prompt", "test", "validation", "train")] == [10, 500, 90, 374]


@needs_real
def test_real_math500_build_eval() -> None:
    build, evaluation = load_tasks("math500", "build"), load_tasks("math500", "eval")
    assert (len(build), len(evaluation)) == (150, 350)
    assert not {t.id for t in build} & {t.id for t in evaluation}
    assert len({t.category for t in build}) == 7
    assert Counter(t.category for t in build)["algebra"] == 37  # 124 * 150/500, rounded by the stratifier


@needs_real
def test_real_gsm8k_ids_are_line_numbers_and_ranges_cover_the_real_splits() -> None:
    """ "GSM8K test 1-100" is the first 100 lines of test.jsonl; HumanEval 0-9 and MBPP 11-210 select whole ranges."""
    first_line = json.loads((REAL / "gsm8k/test.jsonl").read_text().splitlines()[0])
    first_100 = load_tasks("gsm8k", "test", ids="1-100")
    assert first_100 == load_tasks("gsm8k", "test", limit=100)
    assert first_100[0].id == "gsm8k/test/1" and first_100[0].prompt == first_line["question"]
    assert [t.id for t in load_tasks("humaneval", ids="0-9")] == [f"humaneval/HumanEval/{i}" for i in range(10)]
    assert [t.id for t in load_tasks("mbpp", "test", ids="11-210")] == [f"mbpp/{i}" for i in range(11, 211)]
