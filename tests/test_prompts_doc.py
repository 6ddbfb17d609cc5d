"""docs/prompts.md shows what the model receives: every `memcollab show-prompt` example in it is rerun here."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from memcollab.paths import default_data_dir

pytestmark = pytest.mark.skipif(default_data_dir() is None, reason="benchmark data not found (../shared/data)")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "prompts.md"
EXAMPLE = re.compile(r"````text\n\$ memcollab show-prompt (?P<args>[^\n]*)\n(?P<output>.*?)\n````", re.DOTALL)


def examples() -> list[tuple[str, str]]:
    return [(m["args"], m["output"]) for m in EXAMPLE.finditer(DOC.read_text())]


def test_the_doc_has_one_example_per_task_kind() -> None:
    args = " ".join(a for a, _ in examples())
    assert {"gsm8k", "humaneval", "mbpp", "--rule", "--feedback"} <= set(re.findall(r"[\w-]+", args))


@pytest.mark.parametrize(("args", "shown"), examples(), ids=lambda v: v[:40] if isinstance(v, str) else None)
def test_each_example_is_what_the_solver_sends_today(args: str, shown: str) -> None:
    command = [sys.executable, "-m", "memcollab.cli", "show-prompt", *shlex.split(args)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout.rstrip()
    assert out == shown, "docs/prompts.md is stale: run `python docs/render_prompts.py --template`"
