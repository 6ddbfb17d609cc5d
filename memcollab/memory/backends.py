"""Which database a store lives in, read from one string: a path or a URL.

A plain path, ``":memory:"`` or ``sqlite:///path`` is an SQLite file (the single-machine default);
``postgresql://user@host:port/db`` is a PostgreSQL database several machines can share. The
PostgreSQL code and its driver are imported only for a PostgreSQL URL (`backend_class`), so the
default path never needs psycopg or SQLAlchemy.

One PostgreSQL database holds many stores, each in a schema of its own (``?schema=NAME`` on the URL):
a run's results and its memories must not share tables. `store_target` names the store of a run: a file
in the run directory by default, else a schema of the run's ``store_url`` that `schema_name` derives
from the run's and the store's names, the same on every machine, so that builders elsewhere find it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

from memcollab.errors import MemCollabError

#: The hint every "PostgreSQL is not usable here" message ends with.
SCALE_HINT = "pip install 'memcollab[scale]'"

T = TypeVar("T")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_POSTGRES_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg"}
#: PostgreSQL's limit on identifiers (longer ones are cut silently, so two long names could meet).
MAX_SCHEMA = 63
#: A schema name MemCollab accepts in ``?schema=``: lower case (PostgreSQL folds unquoted names), not pg_*.
SCHEMA_NAME = re.compile(r"^(?!pg_)[a-z_][a-z0-9_]{0,62}$")
_CLEAN = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")  # no "__": the separator below stays unambiguous


class Target(NamedTuple):
    """A parsed store location: SQLite with a file path (or ``:memory:``), or PostgreSQL with a psycopg URL."""

    kind: Literal["sqlite", "postgresql"]
    location: str


def parse_target(target: str | Path, error: type[MemCollabError]) -> Target:
    """The backend and location `target` names; anything else raises `error` with one line.

    ``sqlite:///runs/m.sqlite`` is relative and ``sqlite:////abs/m.sqlite`` absolute, as in
    SQLAlchemy and MLflow URLs. PostgreSQL URLs are normalised to the psycopg 3 driver.
    """
    if isinstance(target, Path):
        head = target.parts[0] if target.parts else ""
        if head.endswith(":") and head[:-1].lower() in {*_POSTGRES_SCHEMES, "sqlite"}:  # Path("x://h/db") is "x:/h/db"
            raise error(
                f"store {target} is a URL that went through a file path, which merges its '//'; pass it as text"
            )
        return Target("sqlite", str(target))
    text = str(target)
    found = _SCHEME.match(text)
    if found is None:
        return Target("sqlite", text)
    scheme = found.group(1).lower()
    rest = text[found.end() :]
    if scheme == "sqlite":
        if rest in ("", "/", "/:memory:"):
            return Target("sqlite", ":memory:")
        if not rest.startswith("/"):
            raise error(
                f"bad store URL {text!r}: an SQLite URL has no host; write sqlite:///relative/path or sqlite:////abs/path"
            )
        return Target("sqlite", rest[1:])
    if scheme in _POSTGRES_SCHEMES:
        if not rest.strip("/"):
            raise error(
                f"bad store URL {text!r}: name a server and database, e.g. postgresql://user@host:5432/memcollab"
            )
        return Target("postgresql", "postgresql+psycopg://" + rest)
    if scheme.startswith("postgresql+"):
        raise error(f"bad store URL {text!r}: MemCollab talks to PostgreSQL through psycopg 3; write postgresql://…")
    raise error(f"bad store URL {text!r}: use a file path, sqlite:///path or postgresql://user@host:port/db")


def backend_class(target: str | Path, error: type[MemCollabError], sqlite: type[T], postgres: str) -> type[T]:
    """`sqlite`, or for a PostgreSQL target the class named `postgres` in `memcollab.memory.postgres`,
    imported only then."""
    if parse_target(target, error).kind == "postgresql":
        from memcollab.memory import postgres as module

        return getattr(module, postgres)
    return sqlite


def schema_name(run: str, store: str) -> str:
    """The schema of `store` of the run `run`: readable, at most 63 characters, and one per (run, store).

    Clean lower-case names give ``mc_<run>__<store>`` (neither holds ``__``, so the pair is recoverable);
    anything else (``grid-small-stub``, upper case, too long) is sanitised and ends in ``___`` and a hash
    of the exact pair, which no clean name contains: two different pairs never share a schema.
    """
    clean = f"mc_{run}__{store}"
    if _CLEAN.match(run) and _CLEAN.match(store) and len(clean) <= MAX_SCHEMA:
        return clean
    digest = hashlib.sha256(f"{run}\0{store}".encode()).hexdigest()[:12]
    readable = "__".join(re.sub(r"[^a-z0-9]+", "_", part.lower()).strip("_") for part in (run, store))
    return f"mc_{readable[: MAX_SCHEMA - len(digest) - 6].rstrip('_')}___{digest}"


def with_schema(url: str, schema: str) -> str:
    """`url` with ``schema=`` set in its query (any schema it named is replaced)."""
    base, _, query = url.partition("?")
    kept = [part for part in query.split("&") if part and not part.startswith("schema=")]
    return f"{base}?{'&'.join([*kept, f'schema={schema}'])}"


def check_store_url(url: str) -> str:
    """`url` if it can hold a run's stores: a PostgreSQL URL without a schema of its own; else ValueError
    (for a config field: its message leaves the URL, which may hold a password, out)."""
    try:
        kind = parse_target(url, MemCollabError).kind
    except MemCollabError:
        kind = "other"
    if kind != "postgresql":
        raise ValueError(
            "not a PostgreSQL URL: write postgresql://user@host:port/db "
            "(without store_url the stores are SQLite files in the run dir)"
        )
    if re.search(r"[?&]schema=", url):
        raise ValueError("name the database only: each store of a run gets a schema of its own (drop ?schema=)")
    return url


def store_target(store_url: str | None, run_dir: Path, store: str, file: Path) -> str | Path:
    """Where a run's store lives: `file` (SQLite, the default), or with `store_url` the schema of (run, store).

    The run is named by its directory's name, so two machines running `--run-dir runs/shared` with one
    `--store-url` write one store.
    """
    if store_url is None:
        return file
    return with_schema(store_url, schema_name(run_dir.name or run_dir.resolve().name, store))


__all__ = [
    "SCALE_HINT",
    "SCHEMA_NAME",
    "Target",
    "backend_class",
    "check_store_url",
    "parse_target",
    "schema_name",
    "store_target",
    "with_schema",
]
