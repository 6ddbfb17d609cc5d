"""Pull a runnable Python program out of a model's free-text answer.

Models answer with fenced blocks, bare code, a whole function or (HumanEval
style) only the function body; each must become one program that defines the
task's entry point. The sandbox, not this module, decides whether it works.
"""

from __future__ import annotations

import ast
import re
import textwrap
import warnings

from memcollab.records import Task

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_TAGS = {"", "python", "py", "python3", "py3", "pycon", "ipython"}
_CODE_HINT = re.compile(r"^\s*(def |class |import |from \S+ import |return\b|for |while |if )", re.MULTILINE)


def _parse(code: str) -> ast.Module:
    """ast.parse without SyntaxWarning/DeprecationWarning noise from model code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(code)


def _parses(code: str) -> bool:
    try:
        _parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return True


def _looks_like_code(text: str) -> bool:
    """Parses as Python and is more than bare words ("Sorry" parses too: a lone name)."""
    try:
        tree = _parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return any(not isinstance(s, ast.Expr) or isinstance(s.value, ast.Call) for s in tree.body)


def defines(code: str, name: str) -> bool:
    """True when `code` defines function/class `name` at any depth (assignment to the name counts too)."""
    if not name:
        return False
    try:
        tree = _parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return True
    return False


def fenced_blocks(text: str) -> list[str]:
    """Python (or untagged) fenced code blocks in order; other languages only when nothing else exists."""
    python: list[str] = []
    other: list[str] = []
    for match in _FENCE.finditer(text):
        tag, body = match.group(1).lower(), match.group(2)
        if body.strip():
            (python if tag in _PY_TAGS else other).append(body.rstrip() + "\n")
    return python or other


def _strip_prose(text: str) -> str:
    """Longest code-looking span: from the first code line, dropping trailing lines until it parses."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _CODE_HINT.match(line)), None)
    if start is None:
        return ""
    body = lines[start:]
    for end in range(len(body), 0, -1):
        candidate = "\n".join(body[:end]).rstrip() + "\n"
        if _parses(candidate):
            return candidate
    return "\n".join(body).rstrip() + "\n"  # not valid Python: let the grader report the syntax error


def extract_code(text: str, entry_point: str = "") -> str:
    """The code in `text`: prefer the last fenced block that defines `entry_point`; "" when there is no code."""
    if not isinstance(text, str) or not text.strip():
        return ""
    blocks = fenced_blocks(text)
    if blocks:
        defining = [b for b in blocks if defines(b, entry_point)]
        if defining:
            return defining[-1]
        parsing = [b for b in blocks if _parses(b)]
        return max(parsing or blocks, key=len)
    bare = text.strip("\n")
    if any(_looks_like_code(textwrap.dedent(v)) for v in (bare, "    " + bare)):
        return bare.rstrip() + "\n"  # bare code, or a function body (maybe first line unindented) the caller completes
    return _strip_prose(text)


def prompt_is_code(prompt: str) -> bool:
    """HumanEval prompts are Python (signature + docstring); MBPP prompts are prose."""
    return bool(re.search(r"^\s*def\s+\w+", prompt, re.MULTILINE)) and _parses(prompt)


def _compiles(code: str) -> bool:
    """Full compile (no execution): also catches `return` outside a function, which ast.parse accepts."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(code, "<candidate>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return True


def _join_body(prompt: str, body: str) -> str:
    """Prompt + function body, fixing the usual indentation slips (first line or whole body at column 0)."""
    head = prompt.rstrip("\n") + "\n"
    body = body.lstrip("\n")
    variants = []
    if body[:1] in (" ", "\t"):
        variants.append(head + body)
    variants.append(head + "    " + body)  # first line lost its indent, the rest kept theirs
    variants.append(head + textwrap.indent(textwrap.dedent(body), "    "))  # whole body at column 0
    return next((v for v in variants if _compiles(v)), head + body)


def candidate_program(task: Task, text: str) -> str:
    """The program to test for `text` on `task`, or "" when there is no code.

    For code prompts (HumanEval) the prompt is always prepended: it carries the
    imports and helper functions the entry point relies on, and a full function
    from the model simply redefines the prompt's stub.
    """
    code = extract_code(text, task.entry_point)
    if not code.strip():
        return ""
    if not prompt_is_code(task.prompt):
        return code
    if defines(code, task.entry_point):
        return task.prompt.rstrip() + "\n\n\n" + code
    return _join_body(task.prompt, code)
