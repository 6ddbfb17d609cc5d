"""Code extraction from free text: fences, bare code, HumanEval bodies and full functions, no code."""

from __future__ import annotations

import textwrap

import pytest

from memcollab.grading.code_extract import candidate_program, defines, extract_code, fenced_blocks
from memcollab.records import Task

PROMPT = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n'
HE = Task(id="humaneval/X/0", benchmark="humaneval", split="test", kind="code", prompt=PROMPT, entry_point="total")
MB = Task(
    id="mbpp/1",
    benchmark="mbpp",
    split="test",
    kind="code",
    prompt="Write a function to add.\nYour code should pass this test:\nassert add(1, 2) == 3",
    entry_point="add",
)


def _run(program: str, call: str):
    scope: dict = {}
    exec(compile(program, "<test>", "exec"), scope)  # trusted test strings only
    return eval(call, scope)


def test_fence_languages() -> None:
    text = "a\n```python\nx = 1\n```\nb\n```py\ny = 2\n```\n```\nz = 3\n```\n```bash\nls\n```"
    assert fenced_blocks(text) == ["x = 1\n", "y = 2\n", "z = 3\n"]
    assert fenced_blocks("```text\nonly this\n```") == ["only this\n"]


def test_prefers_the_block_defining_the_entry_point() -> None:
    text = (
        "Helper first:\n```python\nimport math\n```\n"
        "Solution:\n```python\ndef add(a, b):\n    return a + b\n```\n"
        "Usage:\n```python\nprint(add(1, 2))\n```"
    )
    assert extract_code(text, "add") == "def add(a, b):\n    return a + b\n"


def test_last_defining_block_wins() -> None:
    text = "```python\ndef add(a, b):\n    return a - b\n```\nFixed:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert "a + b" in extract_code(text, "add")


def test_unterminated_fence() -> None:
    assert extract_code("```python\ndef add(a, b):\n    return a + b\n", "add").startswith("def add")


def test_bare_code_and_prose_around_code() -> None:
    assert extract_code("def add(a, b):\n    return a + b", "add") == "def add(a, b):\n    return a + b\n"
    text = "Sure! Here it is:\ndef add(a, b):\n    return a + b\nThis adds two numbers."
    assert extract_code(text, "add") == "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize("text", ["", "   \n", "Sorry, I cannot help with that.", "Sorry", "42"])
def test_no_code(text: str) -> None:
    assert extract_code(text, "add") == ""
    assert candidate_program(MB, text) == ""


def test_humaneval_body_only_gets_the_prompt() -> None:
    body = "    s = 0\n    for x in xs:\n        s += x\n    return s\n"
    for variant in (body, textwrap.dedent(body), body.lstrip(), f"```python\n{body}```"):
        program = candidate_program(HE, variant)
        assert program.startswith(PROMPT.rstrip("\n"))
        assert _run(program, "total([1, 2, 3])") == 6, variant


def test_humaneval_full_function_keeps_prompt_imports() -> None:
    text = "```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```"
    program = candidate_program(HE, text)
    assert _run(program, "total([4, 5])") == 9  # `List` comes from the prepended prompt


def test_mbpp_program_is_the_code_alone() -> None:
    assert (
        candidate_program(MB, "```python\ndef add(a, b):\n    return a + b\n```")
        == "def add(a, b):\n    return a + b\n"
    )


def test_defines() -> None:
    assert defines("class add:\n    pass", "add")
    assert defines("add = lambda a, b: a + b", "add")
    assert not defines("def adder(a, b):\n    pass", "add")
    assert defines("def add(a, b:\n  broken", "add")  # falls back to a regex when it does not parse
