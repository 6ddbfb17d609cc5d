"""Raw benchmark rows: a local JSON Lines file (checked line by line first) or a Hugging Face hub split.

`datasets` reports malformed JSON without a line number, so every local file is
validated here before it is read; each problem is one :class:`DataError` line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memcollab.benchmarks.spec import BenchmarkSpec, ReadRows
from memcollab.errors import DataError
from memcollab.paths import default_data_dir


def check_jsonl(path: Path) -> int:
    """Validate a JSON Lines file line by line; return the record count."""
    if not path.is_file():
        raise DataError(f"missing data file {path}; pass --data-dir or set MEMCOLLAB_DATA_DIR to the benchmark data")
    count = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                msg = getattr(exc, "msg", str(exc))
                raise DataError(f"malformed JSON in {path} line {lineno}: {msg}") from None
            if not isinstance(record, dict):
                raise DataError(
                    f"malformed JSON in {path} line {lineno}: expected an object, got {type(record).__name__}"
                )
            count += 1
    if count == 0:
        raise DataError(f"data file {path} has no records")
    return count


def _quiet_datasets() -> None:
    import datasets

    datasets.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_local(path: Path) -> list[dict[str, Any]]:
    """Rows of a local JSONL file, validated first, then read through `datasets`."""
    check_jsonl(path)
    _quiet_datasets()
    from datasets import load_dataset

    try:
        ds = load_dataset("json", data_files=str(path), split="train")
    except Exception as exc:
        raise DataError(f"cannot read {path} with datasets: {_first_line(exc)}") from None
    return ds.to_list()


def read_hub(spec: BenchmarkSpec, source: str) -> list[dict[str, Any]]:
    """Rows of one source from the Hugging Face hub (needs network or a warm HF cache)."""
    _quiet_datasets()
    from datasets import concatenate_datasets, load_dataset

    split = spec.hub_split(source)
    try:
        if split is None:  # the source is every hub split together
            parts = load_dataset(spec.hub_id, spec.hub_config)
            ds = concatenate_datasets([parts[name] for name in parts])
        else:
            ds = load_dataset(spec.hub_id, spec.hub_config, split=split)
    except Exception as exc:
        raise DataError(
            f"no local data directory and the Hugging Face hub is unreachable for {spec.hub_id} "
            f"({_first_line(exc)[:160]}); pass --data-dir or set MEMCOLLAB_DATA_DIR"
        ) from None
    return ds.to_list()


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The directory to read: the one given (which must exist), else the default, else None (the hub)."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataError(f"data directory {path} does not exist; pass an existing --data-dir")
        return path
    return default_data_dir()


def row_reader(spec: BenchmarkSpec, data_dir: Path | None) -> ReadRows:
    """A function source -> rows for `spec`, reading local files when there is a data directory."""

    def read(source: str) -> list[dict[str, Any]]:
        if data_dir is None:
            return read_hub(spec, source)
        return read_local(data_dir / spec.local_files[source])

    return read
