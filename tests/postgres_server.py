"""A throwaway PostgreSQL server for the test session: initdb into a temp dir, a free 127.0.0.1 port, stopped at the end.

Installs nothing: it finds Debian's `initdb`/`pg_ctl` under /usr/lib/postgresql/*/bin (`.ci/run`
installs the `postgresql` package where it is missing) and says why when it cannot run one. PostgreSQL
refuses to run as root, so as root the server runs as the `postgres` user the package creates, in a
temp dir owned by that user. `fsync=off`: the data dies with the session anyway.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from memcollab.lm.server.process import free_port


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory that has both initdb and pg_ctl."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in path.parent.name.split(".") if p.isdigit())

    found = [
        b for b in Path("/usr/lib/postgresql").glob("*/bin") if (b / "initdb").is_file() and (b / "pg_ctl").is_file()
    ]
    return max(found, key=version) if found else None


@dataclass
class PostgresServer:
    """A running server; `url(db)` names a database in it, `create_database()` makes a fresh one per test."""

    bin_dir: Path
    root: Path
    port: int
    user: str | None  # the system user the server runs as (None: this process's user)
    databases: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            user=self.user,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A new empty database; returns its URL. Tests stay independent without a server each."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.data_dir.is_dir():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> tuple[PostgresServer | None, str]:
    """Start a server, or say why it cannot be started here: (server, "") or (None, reason)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return (
            None,
            "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin; apt-get install postgresql)",
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "psycopg is not installed: pip install 'memcollab[scale]'"
    user: str | None = None
    root = Path(tempfile.mkdtemp(prefix="memcollab-pg-"))
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            return None, "running as root and there is no 'postgres' user to run PostgreSQL as"
        os.chown(root, entry.pw_uid, entry.pw_gid)
        user = "postgres"
    server = PostgresServer(bin_dir, root, free_port(), user)
    init = server._run(
        "initdb", "-D", str(server.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
    )
    if init.returncode != 0:
        server.stop()
        return None, f"initdb failed: {(init.stderr or init.stdout).strip().splitlines()[-1:]}"
    options = f"-p {{port}} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    for _attempt in range(3):  # the free port may be taken between looking and binding
        started = server._run(
            "pg_ctl", "start", "-D", str(server.data_dir), "-w", "-t", "60",
            "-l", str(root / "server.log"), "-o", options.format(port=server.port),
        )  # fmt: skip
        if started.returncode == 0:
            break
        server.port = free_port()
    else:
        log = (
            (root / "server.log").read_text(errors="replace").strip().splitlines()[-1:]
            if (root / "server.log").exists()
            else []
        )
        server.stop()
        return None, f"PostgreSQL did not start: {log or started.stderr.strip()}"
    deadline = time.monotonic() + 30
    while True:
        try:
            server._admin("SELECT 1")
            return server, ""
        except Exception as exc:
            if time.monotonic() > deadline:
                server.stop()
                return None, f"PostgreSQL started but does not answer: {exc}"
            time.sleep(0.2)
