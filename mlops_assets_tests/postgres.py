"""A throw-away PostgreSQL cluster for tests: ``initdb`` and ``pg_ctl`` in a temp dir, on loopback.

The binaries come from ``PATH`` or Debian's ``/usr/lib/postgresql/<version>/bin`` (``.ci/run``
installs the ``postgresql`` package). PostgreSQL refuses to run as root, so under root the cluster
belongs to the ``postgres`` user (or ``nobody``) and lives in a directory that user owns. The
cluster trusts local connections without a password (``--auth=trust``) and listens on 127.0.0.1
only, on a free port; its Unix socket sits in its own directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from mlops_assets_tests.conftest import free_port


def pg_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None where PostgreSQL is absent."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


@dataclass(frozen=True)
class PostgresCluster:
    """A running cluster: where it listens and who may log in (no password needed)."""

    host: str
    port: int
    user: str
    root: Path

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if missing) and return its SQLAlchemy/psycopg2 URL."""
        connection = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres"
        )
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{name}"


def _owner() -> tuple[str, int, int] | None:
    """The user the server runs as when we are root (it refuses root), else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_name, entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists")


@contextlib.contextmanager
def postgres_cluster(timeout_s: float = 60.0) -> Generator[PostgresCluster]:
    """Start a fresh cluster, yield it, then stop it and delete its files."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("initdb/pg_ctl not found (install Debian's `postgresql`)")
    owner = _owner()
    root = Path(tempfile.mkdtemp(prefix="pgtest-"))  # under /tmp: reachable by another user
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    sockets.mkdir()
    if owner is not None:
        for path in (root, sockets):
            os.chown(path, owner[1], owner[2])
    user = owner[0] if owner else pwd.getpwuid(os.geteuid()).pw_name
    uid, gid = (owner[1], owner[2]) if owner else (None, None)
    port = free_port()
    try:
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=timeout_s,
            cwd=root,
            user=uid,
            group=gid,
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=100 -c shared_buffers=32MB"
        )
        subprocess.run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout_s)),
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s + 5,
            cwd=root,
            user=uid,
            group=gid,
        )
        yield PostgresCluster(host="127.0.0.1", port=port, user=user, root=root)
    except subprocess.CalledProcessError as error:
        server_log = log.read_text()[-2000:] if log.is_file() else ""
        raise RuntimeError(
            f"PostgreSQL did not start: {error.stderr.decode(errors='replace')}\n{server_log}"
        ) from error
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
                cwd=root,
                user=uid,
                group=gid,
            )
            deadline = time.monotonic() + 10
            while (data / "postmaster.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)
