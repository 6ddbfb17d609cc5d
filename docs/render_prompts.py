"""Regenerate docs/prompts.md: every example is a `memcollab show-prompt` command and its exact output.

    python docs/render_prompts.py            # messages only
    python docs/render_prompts.py --template # also the text after Qwen's chat template (starts llama-server)

`tests/test_prompts_doc.py` reruns each command and checks the doc still shows what the model receives.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).with_name("prompts.md")
PREVIOUS = Path(__file__).with_name("prompt_previous_attempt.py")

EXAMPLES = [
    ("Math (GSM8K), no memory: the plain prompt", "--benchmark gsm8k --id 1"),
    (
        "Math with memory: the rules come first, as a short numbered list",
        "--benchmark gsm8k --id 1 --rule 'When a quantity is used up in several ways, enforce: subtract every use "
        "before pricing the rest; avoid: pricing the total' --rule 'When a rate is per item, enforce: multiply by "
        "the count of items; avoid: adding the rate once'",
    ),
    ("Code (HumanEval), turn 1: the single-turn protocol", "--benchmark humaneval --id 2"),
    (
        "Code (HumanEval), turn 2: the previous attempt replayed, then the test feedback",
        f"--benchmark humaneval --id 2 --previous {PREVIOUS.relative_to(DOC.parents[1])} "
        "--feedback 'AssertionError: truncate_number(3.5) returned 3 (expected 0.5)'",
    ),
    ("Code (MBPP): prose task, one example test", "--benchmark mbpp --id 11"),
]

HEADER = """# What the model receives

Every number MemCollab reports comes from these prompts. For small local models the solver uses
`NaturalAdapter` (`memcollab/lm/adapters.py`): one user message in the model's own chat template, a
one-sentence instruction, memory as a short numbered list before the problem, and nothing else; the
answer or code is parsed from the free-text reply with the graders' extractors. Each example below is a
`memcollab show-prompt` command and its exact output (`tests/test_prompts_doc.py` reruns them);
`--template MODEL` also prints the text after the model's chat template, as llama-server builds it.
Regenerate with `python docs/render_prompts.py --template`.

The distiller's and the reflection baseline's outputs are lists of constraints, which free text cannot
carry reliably: those two programs go through DSPy's JSON adapter (grammar-constrained on llama-server).
Hosted models (`backend: litellm`) use DSPy's chat adapter unless an agent sets `adapter: natural`.
"""


def run(args: str) -> str:
    command = [sys.executable, "-m", "memcollab.cli", "show-prompt", *shlex.split(args)]
    return subprocess.run(command, capture_output=True, text=True, check=True, cwd=DOC.parents[1]).stdout.rstrip()


def main() -> None:
    template = "--template" in sys.argv[1:]
    parts = [HEADER]
    for i, (title, args) in enumerate(EXAMPLES):
        parts.append(f"## {title}\n\n````text\n$ memcollab show-prompt {args}\n{run(args)}\n````\n")
        if template and i in (0, 3):
            templated = run(f"{args} --template qwen2.5-coder-0.5b").split(
                "chat template applied by llama-server ---\n"
            )[1]
            parts.append(
                f"After Qwen2.5-Coder's chat template (what the model reads):\n\n````text\n{templated}\n````\n"
            )
    DOC.write_text("\n".join(parts))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
