"""`memcollab memory ...`: look into, export and import a memory store.

Read commands (`list`, `show`, `stats`, `export`) never create a store and
never write to one: they open it read-only, so a mistyped --store path is an
error, not a silently empty memory, and inspecting a file leaves its bytes as
they were. Store contents and paths are printed as plain text, never as rich
markup (a memory may well contain `[/x]`). Imports live inside the commands so
`memcollab --help` stays fast.

`--store` is text, not a path: a file path, `sqlite:///path`, or a PostgreSQL URL
(`postgresql://user@host:port/db?schema=NAME`, the schema a run with `--store-url`
printed), which a path type would mangle (`postgresql:/host/db`). Messages name the
store as the store names itself, so a URL's password is never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from rich.text import Text

    from memcollab.memory.store import MemoryStore

DEFAULT_STORE = "runs/memory.sqlite"

memory_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

StoreOption = typer.Option(
    DEFAULT_STORE,
    "--store",
    "-s",
    envvar="MEMCOLLAB_STORE",
    help="Memory store: an SQLite file (a path or sqlite:///path) or a PostgreSQL URL "
    "(postgresql://user@host:port/db?schema=NAME; `run` and `build-memory` with --store-url print their memory's URL).",
    show_default=True,
)


def _open(target: str, create: bool = False, read_only: bool = True) -> MemoryStore:
    """The store `target` names: read-only unless a command writes (only `import` does)."""
    from memcollab.memory.store import MemoryStore

    return MemoryStore(target, create=create, read_only=read_only)


def _plain(text: object) -> Text:
    """`text` as rich Text: printed verbatim, never parsed as markup."""
    from rich.text import Text

    return Text(str(text))


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@memory_app.command("list")
def list_cmd(
    store: str = StoreOption,
    category: Optional[str] = typer.Option(None, "--category", "-c", help="Only this category."),
    limit: int = typer.Option(50, "--limit", "-n", min=0, help="Show at most N entries (0 = all)."),
) -> None:
    """List memories: id, category, error type, support and the (truncated) constraint."""
    from rich.table import Table

    from memcollab.cli.consoles import make_console

    with _open(store) as mem:
        entries = mem.entries(category=category)
    shown = entries if limit == 0 else entries[:limit]
    table = Table(title=_plain(f"{mem.path} - {len(entries)} memories" + (f" in {category}" if category else "")))
    for column in ("id", "category", "error type", "support", "text"):
        table.add_column(column, justify="right" if column == "support" else "left", overflow="fold")
    for e in shown:
        table.add_row(*map(_plain, (e.id, e.category, e.error_type, e.support, _truncate(e.text, 90))))
    console = make_console()
    console.print(table)
    if len(shown) < len(entries):
        console.print(f"showing {len(shown)} of {len(entries)}; use --limit 0 for all", markup=False)


@memory_app.command("show")
def show_cmd(
    memory_id: str = typer.Argument(..., metavar="ID", help="Memory id (see `memcollab memory list`)."),
    store: str = StoreOption,
    as_json: bool = typer.Option(False, "--json", help="Print the entry as one JSON object."),
) -> None:
    """Show one memory with everything stored about it, provenance included."""
    from rich.text import Text

    from memcollab.cli.consoles import make_console
    from memcollab.errors import MemoryStoreError

    with _open(store) as mem:
        entry = mem.get(memory_id)
    if entry is None:
        raise MemoryStoreError(f"no memory with id {memory_id!r} in {mem.path}; see `memcollab memory list`")
    if as_json:
        typer.echo(entry.model_dump_json(indent=2))
        return
    console = make_console()
    fields = {
        "id": entry.id,
        "category": entry.category,
        "error type": entry.error_type,
        "domain": entry.domain or "-",
        "support": entry.support,
        "created at": entry.created_at,
        "when": entry.when,
        "enforce": entry.enforce,
        "avoid": entry.avoid,
        "rendered": entry.text,
        "tasks": ", ".join(entry.provenance.task_ids) or "-",
        "positive agents": ", ".join(entry.provenance.positive_agents) or "-",
        "negative agents": ", ".join(entry.provenance.negative_agents) or "-",
    }
    for key, value in fields.items():
        console.print(Text.assemble((f"{key:>16}", "bold"), "  ", str(value)), highlight=False, soft_wrap=True)


@memory_app.command("stats")
def stats_cmd(
    store: str = StoreOption,
    heatmap: Optional[Path] = typer.Option(
        None, "--heatmap", help="Also save the category x error-type distribution heatmap as a PNG."
    ),
) -> None:
    """Counts per category x error type, totals and total support."""
    from rich.table import Table

    from memcollab.cli.consoles import make_console

    with _open(store) as mem:
        stats = mem.stats()
        entries = mem.entries() if heatmap else []
    table = Table(title=_plain(f"{mem.path} - {stats['entries']} memories, total support {stats['total_support']}"))
    error_types = list(stats["error_types"])
    table.add_column("category")
    for et in error_types:
        table.add_column(_plain(et), justify="right")
    table.add_column("total", justify="right", style="bold")
    for category, row in stats["matrix"].items():
        counts = [str(row.get(et, 0)) for et in error_types]
        table.add_row(_plain(category), *counts, str(stats["categories"][category]))
    table.add_row("total", *(str(stats["error_types"][et]) for et in error_types), str(stats["entries"]), style="bold")
    console = make_console()
    console.print(table)
    if heatmap:
        from memcollab.memory.clustering import error_type_matrix, plot_heatmap

        path = plot_heatmap(*error_type_matrix(entries), heatmap)
        console.print(f"heatmap written to {path}", markup=False, highlight=False)


@memory_app.command("export")
def export_cmd(
    out: Path = typer.Argument(..., metavar="OUT.jsonl", help="File to write, one JSON entry per line."),
    store: str = StoreOption,
) -> None:
    """Export every memory as JSON lines (ids, support, provenance and timestamps kept)."""
    with _open(store) as mem:
        count = mem.export_jsonl(out)
    typer.echo(f"exported {count} memories to {out}")


@memory_app.command("import")
def import_cmd(
    source: Path = typer.Argument(..., metavar="IN.jsonl", help="A file written by `memcollab memory export`."),
    store: str = StoreOption,
) -> None:
    """Import memories from JSON lines; creates the store if needed, merges entries with known ids."""
    from memcollab.memory.store import read_memory_jsonl

    entries = read_memory_jsonl(source)  # read before opening: a typo or a bad file leaves no empty store behind
    with _open(store, create=True, read_only=False) as mem:
        added, merged = mem.import_entries(entries, source=str(source))
        total = len(mem)
    typer.echo(f"imported {source}: {added} added, {merged} merged; {mem.path} now holds {total} memories")
