"""Prompt-reading speed of each embedded model on llama-server: the figure the time estimate lacked.

The distiller reads a prompt of about 1,450 tokens and writes about 200, so on 2 cores its calls cost more
time reading than writing; `configs/throughput.yaml` needs the prompt rate next to the generation rate.
Each request is a fresh prompt of GSM8K train problems (no cached prefix: `cache_prompt` off) with one
generated token, on a 1-slot server, one at a time; the figure is llama-server's own `prompt_per_second`
(median of `--repeats`), with the ratio to the generation rate in `configs/throughput.yaml`.

    python benchmarks/prompt_rate.py --out results/benchmarks/prompt_rate.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import httpx

from memcollab.experiments.estimate import load_throughput
from memcollab.lm.server import LlamaServer, resolve_model

MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


def prompts(path: Path, repeats: int, per_prompt: int) -> list[str]:
    """`repeats` prompts of `per_prompt` distinct problems each (distinct, so no prefix is shared)."""
    with path.open() as fh:
        questions = [json.loads(line)["question"] for _, line in zip(range(repeats * per_prompt), fh)]
    return ["\n\n".join(questions[i * per_prompt : (i + 1) * per_prompt]) for i in range(repeats)]


def measure(model: str, texts: list[str]) -> dict[str, float]:
    path, _ = resolve_model(model)
    rates, tokens = [], []
    with LlamaServer(path, n_parallel=1, ctx_per_slot=4096) as server, httpx.Client(timeout=600) as client:
        for text in texts:
            reply = client.post(
                f"{server.root}/completion", json={"prompt": text, "n_predict": 1, "cache_prompt": False}
            ).json()
            rates.append(reply["timings"]["prompt_per_second"])
            tokens.append(reply["timings"]["prompt_n"])
    return {"prompt_tokens_per_s": statistics.median(rates), "prompt_tokens": statistics.median(tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--problems", type=int, default=12, help="GSM8K problems per prompt (about 800 tokens)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    texts = prompts(args.data, args.repeats, args.problems)
    figures = load_throughput()
    rows = []
    for model in args.models:
        row = {"model": model, **measure(model, texts)}
        generation = figures.rate(model, "server") if figures else None
        row["generation_tokens_per_s"] = generation
        row["prompt_vs_generation"] = row["prompt_tokens_per_s"] / generation if generation else None
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
