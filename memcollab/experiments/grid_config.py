"""A grid of paired comparisons as one YAML file: benchmarks, the build slice, agents, methods, k values, seeds.

The file names cell groups (a target agent, its evaluation ids, its methods) and optionally a transfer
section (memory sources x target agents); `expand_cells` turns it into cells, one per (benchmark,
target, method, memory source, seed). Every target gets a `none` cell that runs on every task any of
its cells runs on, so each cell is compared with `none` on exactly its own tasks.

A method in a group is a preset name (`memcollab`, `self`, ...; see `programs.methods.PRESETS`), a
name defined under `methods:`, or a mapping `{method: <name>, <field>: <value>, ...}`; `k` may be a
list (`{method: memcollab, k: [1, 5, 10]}` makes `memcollab-k1`, `memcollab-k5`, `memcollab-k10`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from memcollab.benchmarks import benchmark_names, parse_ids
from memcollab.errors import ConfigError, DataError
from memcollab.experiments.config import StoreURL
from memcollab.programs.methods import PRESETS, MethodSpec

BenchmarkName = Literal[benchmark_names()]  # type: ignore[valid-type]
Ids = str | dict[str, str]
#: Memory sources relative to the target; anything else is agent names joined by '+'.
SOURCE_ALIASES = ("none", "self", "peer", "pair", "xfamily")


def _check_ids(value: Ids) -> Ids:
    """Every id string parses (a malformed range fails at load, naming itself)."""
    for ids in [value] if isinstance(value, str) else list(value.values()):
        try:
            parse_ids(ids)
        except DataError as exc:
            raise ValueError(str(exc)) from None
    return value


#: Ids checked at load: a malformed range fails there, naming itself.
CheckedIds = Annotated[Ids, AfterValidator(_check_ids)]


def ids_on(value: Ids, benchmark: str) -> str | None:
    """The ids `value` gives `benchmark`: the one string, or its entry (None: skip it)."""
    return value if isinstance(value, str) else value.get(benchmark)


class _Slice(BaseModel):
    """Evaluation ids: one string for every benchmark, or one per benchmark (a benchmark it omits is skipped)."""

    model_config = ConfigDict(extra="forbid")

    eval_ids: CheckedIds

    def ids_for(self, benchmark: str) -> str | None:
        """These ids on `benchmark` (None: skip it)."""
        return ids_on(self.eval_ids, benchmark)


class CellGroup(_Slice):
    """A target agent, the evaluation ids it runs on (one string, or per benchmark) and its methods."""

    target: str
    methods: list[str | dict[str, Any]] = Field(min_length=1)


class TransferSpec(_Slice):
    """The paper's transfer matrix: rows are memory sources (one agent: reflection memory; several: MemCollab
    of those agents), columns are target agents, each cell accuracy and change vs no memory."""

    sources: list[str] = Field(min_length=1)  # agent names, several joined by '+' (never aliases)
    targets: list[str] = Field(min_length=1)
    single: str = "self"  # the method a one-agent source uses (its kind; named self/naive by the target)
    multi: str = "memcollab"  # the method a several-agent source uses


class BestOf(_Slice):
    """ "The best of the rest": of `methods` (cells of `target`), the one with the highest paired difference to no
    memory on `chosen_on` then also runs on `eval_ids`; its comparison on `eval_ids` minus `chosen_on` is held out
    (best_of.csv). The rule is written down before the candidates run: a method chosen on the tasks it is then
    reported on would look better than it is."""

    target: str
    methods: list[str] = Field(min_length=2)
    chosen_on: CheckedIds

    def chosen_on_for(self, benchmark: str) -> str | None:
        return ids_on(self.chosen_on, benchmark)


class GridConfig(BaseModel):
    """Everything that defines a grid; stored with its results (grid.json) and logged to MLflow."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    benchmarks: list[BenchmarkName] = Field(min_length=1)  # type: ignore[valid-type]
    build_ids: CheckedIds
    cells: list[CellGroup] = Field(min_length=1)
    transfer: TransferSpec | None = None
    best_of: BestOf | None = None
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    pair: list[str] = Field(default_factory=lambda: ["weak", "strong"], min_length=2)
    xfamily: list[str] = Field(default_factory=lambda: ["strong", "other"], min_length=2)
    distiller: str | None = None  # default: the pair's last agent
    classifier: str | None = None  # default: the distiller
    samples: int = Field(default=0, ge=0)
    sample_temperature: float = Field(default=0.7, ge=0.0)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    max_turns: int = Field(default=3, ge=1)
    gold_categories: bool = False
    workers: int = Field(default=4, ge=1)
    run_dir: Path = Path("runs/grid")
    agents_file: Path | None = None
    data_dir: Path | None = None
    tracking_uri: str | None = None
    track: bool = True
    cache: bool = True
    max_tokens: int | None = Field(default=None, gt=0)
    backend: Literal["auto", "local", "server"] | None = None
    solver_program: Path | None = None
    classifier_program: Path | None = None
    bootstrap_samples: int = Field(default=10_000, ge=100)
    max_errors: int = Field(default=10, ge=0)  # unanswered LM calls per cell (endpoint down) before the grid stops
    store_url: StoreURL = None  # the results and memory stores in this PostgreSQL database, a schema each

    @model_validator(mode="after")
    def _consistent(self) -> GridConfig:
        for name in self.methods:
            if name in PRESETS:
                raise ValueError(f"methods: '{name}' is a preset; give your variant another name")
        for ids in [self.build_ids, *(g.eval_ids for g in self.cells)]:
            if isinstance(ids, dict) and not set(ids) <= set(self.benchmarks):
                raise ValueError(f"ids given for {sorted(set(ids) - set(self.benchmarks))}, not in benchmarks")
        if isinstance(self.build_ids, dict) and set(self.build_ids) != set(self.benchmarks):
            raise ValueError(f"build_ids: give ids for every benchmark ({', '.join(self.benchmarks)})")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: each seed once")
        return self

    @property
    def distiller_name(self) -> str:
        return self.distiller or self.pair[-1]

    @property
    def classifier_name(self) -> str:
        return self.classifier or self.distiller_name

    def build_ids_for(self, benchmark: str) -> str:
        return self.build_ids if isinstance(self.build_ids, str) else self.build_ids[benchmark]

    def method(self, ref: str | dict[str, Any]) -> list[MethodSpec]:
        """The spec(s) a group's method entry names (several for a list of k)."""
        fields = {"method": ref} if isinstance(ref, str) else dict(ref)
        name = fields.pop("method", None)
        if not isinstance(name, str):
            raise ConfigError(f"grid config {self.name}: a method mapping needs 'method: <name>', got {ref!r}")
        base = self._named(name)
        k_values = fields.pop("k", None)
        label = fields.pop("name", None)
        ks = k_values if isinstance(k_values, list) else [k_values if k_values is not None else base.k]
        specs = []
        for k in ks:
            own = label or (base.name if k == base.k else f"{base.name}-k{k}")
            specs.append(_spec(self.name, {**base.model_dump(), **fields, "k": k, "name": own}))
        return specs

    def _named(self, name: str) -> MethodSpec:
        if name in self.methods:
            fields = dict(self.methods[name])
            parent = fields.pop("method", None)
            base = self._named(parent).model_dump() if parent else {}
            return _spec(self.name, {**base, **fields, "name": name})
        if name in PRESETS:
            return PRESETS[name]
        known = [*PRESETS, *self.methods]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"grid config {self.name}: unknown method '{name}'{hint}; known: {', '.join(known)}")

    def resolve_source(self, source: str, target: str) -> tuple[str, ...]:
        """A spec's source for one target: agent names, in order (empty for no memory). `peer` is the pair's
        last agent that is not the target (weak -> strong, strong -> weak, another agent -> strong)."""
        if source == "none":
            return ()
        if source == "self":
            return (target,)
        if source == "peer":
            return (next(a for a in reversed(self.pair) if a != target),)
        if source == "pair":
            return tuple(self.pair)
        if source == "xfamily":
            return tuple(self.xfamily)
        return tuple(name.strip() for name in source.split("+") if name.strip())


def _spec(where: str, fields: dict[str, Any]) -> MethodSpec:
    try:
        return MethodSpec(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(p) for p in error.get("loc", ()))
        raise ConfigError(f"grid config {where}: method '{fields.get('name')}': {loc}: {error.get('msg')}") from None


@dataclass(frozen=True)
class Cell:
    """One comparison cell: a method with its memory source, solved by a target agent on a benchmark."""

    benchmark: str
    target: str
    method: MethodSpec
    source: tuple[str, ...]
    seed: int
    eval_ids: str

    @property
    def source_label(self) -> str:
        return "+".join(self.source) or "-"

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        return (self.benchmark, self.target, self.method.name, self.source_label, self.seed)

    @property
    def id(self) -> str:
        """A file- and MLflow-safe name."""
        source = "_".join(self.source) or "none"
        return f"{self.benchmark}.{self.target}.{self.method.name}.{source}.s{self.seed}"

    @property
    def family(self) -> str:
        """The method without its k (the k ablation's lines)."""
        suffix = f"-k{self.method.k}"
        return self.method.name[: -len(suffix)] if self.method.name.endswith(suffix) else self.method.name

    def labels(self) -> dict[str, Any]:
        """What names this cell in every table row (per-task rows and the summary table)."""
        return {
            "cell": self.id,
            "benchmark": self.benchmark,
            "target": self.target,
            "method": self.method.name,
            "family": self.family,
            "kind": self.method.kind,
            "source": self.source_label,
            "seed": self.seed,
            "k": self.method.k,
            "gate": self.method.gate,
        }


def _cell(benchmark: str, target: str, spec: MethodSpec, source: tuple[str, ...], seed: int, ids: str) -> Cell:
    """A cell whose spec names its resolved source, so an alias and the agents it stands for are one cell."""
    return Cell(benchmark, target, spec.model_copy(update={"source": "+".join(source) or "none"}), source, seed, ids)


def _merge(cells: dict[tuple, Cell], cell: Cell, where: str) -> None:
    """Add a cell; the same cell named twice runs on the union of its ids (its settings must agree)."""
    found = cells.get(cell.key)
    if found is None:
        cells[cell.key] = cell
        return
    if found.method != cell.method:
        raise ConfigError(f"grid config {where}: '{cell.method.name}' for {cell.target} is defined twice, differently")
    if cell.eval_ids not in found.eval_ids.split(","):
        cells[cell.key] = Cell(
            found.benchmark, found.target, found.method, found.source, found.seed, f"{found.eval_ids},{cell.eval_ids}"
        )


def transfer_source(label: str) -> tuple[str, ...]:
    """A transfer row's agents: `weak`, `weak+strong` (agent names, never aliases: an agent may be called other)."""
    return tuple(name.strip() for name in label.split("+") if name.strip())


def transfer_method(cfg: GridConfig, source: tuple[str, ...], target: str) -> MethodSpec:
    """The method of one transfer-matrix cell: reflection memory for one agent (named self or naive, as the
    group cells are), the `multi` method (MemCollab) for several."""
    spec = cfg.transfer or TransferSpec(sources=["-"], targets=["-"], eval_ids="1")
    if len(source) == 1:
        base = cfg.method(spec.single)[0]
        if base.name in ("self", "naive"):
            return PRESETS["self" if source == (target,) else "naive"]
        return base
    return cfg.method(spec.multi)[0]


def expand_cells(cfg: GridConfig, chosen: Mapping[str, str] | None = None) -> list[Cell]:
    """Every cell of the grid, `none` cells first per (benchmark, target), in config order. `chosen`: the best of
    the rest per benchmark (`best_of`), once chosen: that method's cell also runs on `best_of.eval_ids`."""
    cells: dict[tuple, Cell] = {}
    best = cfg.best_of
    for benchmark in cfg.benchmarks:
        for group in cfg.cells:
            ids = group.ids_for(benchmark)
            if ids is None:
                continue
            for ref in group.methods:
                for spec in cfg.method(ref):
                    source = cfg.resolve_source(spec.source, group.target)
                    for seed in cfg.seeds[:1] if spec.kind == "none" else cfg.seeds:
                        _merge(cells, _cell(benchmark, group.target, spec, source, seed, ids), cfg.name)
        if cfg.transfer is not None and (ids := cfg.transfer.ids_for(benchmark)) is not None:
            for label in cfg.transfer.sources:
                source = transfer_source(label)
                for target in cfg.transfer.targets:
                    spec = transfer_method(cfg, source, target)
                    for seed in cfg.seeds:
                        _merge(cells, _cell(benchmark, target, spec, source, seed, ids), cfg.name)
        winner = (chosen or {}).get(benchmark)
        if best is not None and winner is not None and (ids := best.ids_for(benchmark)) is not None:
            for spec in cfg.method(winner):
                source = cfg.resolve_source(spec.source, best.target)
                for seed in cfg.seeds:
                    _merge(cells, _cell(benchmark, best.target, spec, source, seed, ids), cfg.name)
    # The none cell of each target covers every task its cells run on.
    ordered: list[Cell] = []
    for benchmark in cfg.benchmarks:
        for target in dict.fromkeys(c.target for c in cells.values() if c.benchmark == benchmark):
            mine = [c for c in cells.values() if c.benchmark == benchmark and c.target == target]
            parts = [part for c in mine for part in c.eval_ids.split(",")]
            if best is not None and best.target == target and (ids := best.ids_for(benchmark)) is not None:
                parts.append(ids)  # the best of the rest, chosen or not yet, is compared on these tasks
            union = ",".join(dict.fromkeys(parts))
            none = next((c for c in mine if c.method.kind == "none"), None)
            spec = none.method if none else PRESETS["none"]
            ordered.append(Cell(benchmark, target, spec, (), cfg.seeds[0], union))
            if len([c for c in mine if c.method.kind == "none"]) > 1:
                raise ConfigError(f"grid config {cfg.name}: {target} has two no-memory methods; name one")
            ordered += [c for c in mine if c.method.kind != "none"]
    return ordered


def agent_names(cfg: GridConfig, cells: list[Cell]) -> list[str]:
    """Every agent the grid runs: targets, memory sources, distiller and classifier, each once."""
    names = [c.target for c in cells] + [a for c in cells for a in c.source]
    names += [cfg.distiller_name, cfg.classifier_name]
    return list(dict.fromkeys(names))


def is_grid_config(path: Path) -> bool:
    """Whether a YAML file is a grid config (it has `cells:`) rather than a RunConfig."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "cells" in data


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = ".".join(str(part) for part in error.get("loc", ()))
    if error.get("type") == "extra_forbidden":
        allowed = list(GridConfig.model_fields)
        close = difflib.get_close_matches(loc.split(".")[-1], allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown field '{loc}'{hint}"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{loc}: {message}" if loc else message


def load_grid_config(path: Path, **overrides: Any) -> GridConfig:
    """A GridConfig from YAML with `overrides` (None = keep the file's value); one-line ConfigError otherwise."""
    if not Path(path).is_file():
        raise ConfigError(f"grid config not found: {path}")
    where = f"invalid grid config {path}"
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{where}: invalid YAML" + (f" at line {mark.line + 1}" if mark else "")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    data.setdefault("name", Path(path).stem)
    try:
        cfg = GridConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_one_line(exc)}") from None
    expand_cells(cfg)  # unknown methods and conflicting cells fail here, before anything runs
    return cfg
