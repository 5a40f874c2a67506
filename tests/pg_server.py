"""Pytest fixtures that run a real PostgreSQL (Debian's server binaries) on a free loopback port.

    postgres_server   session-wide: initdb into a fresh folder, start on 127.0.0.1 with fsync on,
                      stop and delete it at the end of the session
    postgres_dsn      a new, empty database per test: postgresql://fedge@127.0.0.1:PORT/t_N

As root (CI) the server runs as the `postgres` OS user: PostgreSQL refuses to run as root.
Without server binaries (/usr/lib/postgresql/*/bin) or psycopg the tests skip with what to
install, unless FEDGE_REQUIRE_POSTGRES=1 (CI), where they fail. Tests using these fixtures
get the `postgres` marker.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTGRES_FIXTURES = ("postgres_server", "postgres_dsn")
INSTALL_HINT = "install Debian's `postgresql` and `pip install fedge[postgres]`"
SUPERUSER = "fedge"


def find_pg_bin() -> Path | None:
    """The folder of the newest installed server's initdb, pg_ctl and postgres."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(os.path.realpath(initdb)).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: Path
    data_dir: Path
    port: int
    _names = itertools.count()

    def _as_owner(self, *argv: str) -> list[str]:
        """The command, as the postgres OS user when we are root."""
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def start(self) -> PostgresServer:
        subprocess.run(self._as_owner(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                                      "--auth=trust", "--encoding=UTF8", "--no-sync"),
                       check=True, capture_output=True)
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data_dir} "
                   "-c fsync=on -c synchronous_commit=on -c max_connections=200")
        subprocess.run(self._as_owner(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l",
                                      str(self.data_dir / "server.log"), "-o", options, "-w", "-t", "60", "start"),
                       check=True, capture_output=True)
        return self

    def stop(self) -> None:
        # immediate: no shutdown checkpoint, which would fsync every test database's files
        # (a minute after the kill -9 suite) only for the folder to be deleted.
        subprocess.run(self._as_owner(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                                      "-w", "stop"), capture_output=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its DSN."""
        import psycopg

        name = f"t_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)


def import_psycopg():
    """psycopg, or a skip when it is not installed (a failure under FEDGE_REQUIRE_POSTGRES=1)."""
    try:
        import psycopg
    except ImportError:
        _missing(f"no psycopg; {INSTALL_HINT}")
    return psycopg


def _missing(msg: str) -> None:
    if os.environ.get("FEDGE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{msg} (FEDGE_REQUIRE_POSTGRES=1 makes this an error)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def postgres_server():
    bin_dir = find_pg_bin()
    if bin_dir is None:
        _missing(f"no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb); {INSTALL_HINT}")
    import_psycopg()
    # Not under pytest's tmp folder: it is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="fedge-pg-"))
    data_dir = root / "data"
    data_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data_dir, "postgres")
    server = PostgresServer(bin_dir, data_dir, _free_port())
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        log = data_dir / "server.log"
        detail = (exc.stderr or b"").decode(errors="replace") + (log.read_text() if log.exists() else "")
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {detail[-2000:]}")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server) -> str:
    return postgres_server.create_database()
