"""Starts and stops a throwaway PostgreSQL cluster on 127.0.0.1, for tests and local development.

The load-balanced recipient provider (offchain/si/pgmailbox.py, offchain/si/pgbus.py) keeps its
mailbox and push routing in PostgreSQL; its tests need a real server, started on a fresh machine
without touching any system cluster. So this module runs the server binaries directly:

* `initdb` into a fresh directory (C locale and UTF-8, so a machine without generated locales works;
  scram-sha-256 with a random password, so other local users cannot walk in on the loopback port),
* `postgres` in the foreground as our child, listening on 127.0.0.1 only, on a free port, with no
  Unix socket (Debian's default socket directory may not exist or be writable),
* stopped with SIGINT (PostgreSQL's "fast" shutdown), then SIGKILL if it lingers; the directory is
  removed afterwards.

PostgreSQL refuses to run as root. When we are root, both programs run as the `postgres` system user
(which Debian's package creates) through `subprocess.Popen(user=…)`, in a directory that user owns.
Running the server as our direct child, rather than through `pg_ctl` (which daemonizes), also lets
it die with us: on Linux the child asks for SIGINT when its parent goes away, so a test run killed
with SIGKILL does not leave a server behind (its directory is removed by a later start, after an hour).

The binaries are looked up in `$CONET_PG_BIN`, then on PATH, then where Debian puts them
(`/usr/lib/postgresql/<version>/bin`, the newest version first), then `pg_config --bindir`.
`scripts/ensure_postgres.sh` installs them with apt-get when none are found.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

__all__ = [
    "PostgresError",
    "PostgresNotFound",
    "PostgresServer",
    "find_binary",
    "running_postgres",
    "start_postgres",
]

SUPERUSER = "postgres"
SYSTEM_USER = "postgres"
ENV_BIN = "CONET_PG_BIN"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
_PR_SET_PDEATHSIG = 1


class PostgresError(RuntimeError):
    """The throwaway PostgreSQL cluster could not be created, started or stopped."""


class PostgresNotFound(PostgresError):
    """PostgreSQL's server programs (initdb, postgres) are not installed where we look."""


@dataclass
class PostgresServer:
    """A running throwaway cluster. `dsn` is a libpq connection URI for its superuser."""

    process: subprocess.Popen[bytes]
    port: int
    password: str
    base_dir: Path
    """Holds `data/` and `server.log`; removed by `stop()` unless `keep` was asked for."""
    keep: bool = False
    _stopped: bool = field(default=False, repr=False)

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        """The connection URI for database `dbname` of this cluster."""
        return (
            f"postgresql://{SUPERUSER}:{quote(self.password)}@127.0.0.1:{self.port}/{quote(dbname)}?connect_timeout=10"
        )

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit), then SIGKILL if it
        lingers; then remove the directory. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=timeout)
        finally:
            if not self.keep:
                shutil.rmtree(self.base_dir, ignore_errors=True)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def find_binary(name: str) -> Path:
    """The PostgreSQL program `name` (initdb, postgres, pg_ctl …); `PostgresNotFound` with what to do
    if it is not installed."""
    override = os.environ.get(ENV_BIN)
    if override:
        candidate = Path(override) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        raise PostgresNotFound(f"${ENV_BIN} is {override!r}, which has no executable {name!r}")
    on_path = shutil.which(name)
    # Debian's /usr/bin holds pg_wrapper links for client programs, never initdb/postgres; a real
    # binary on PATH (a source build, another distribution) is still preferred when there is one.
    if on_path is not None:
        return Path(on_path)
    if DEBIAN_ROOT.is_dir():
        versions = sorted((p for p in DEBIAN_ROOT.iterdir() if (p / "bin" / name).is_file()), key=_version_key)
        if versions:
            return versions[-1] / "bin" / name
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if bindir and (Path(bindir) / name).is_file():
                return Path(bindir) / name
    raise PostgresNotFound(
        f"PostgreSQL's {name!r} was not found (looked in ${ENV_BIN}, PATH, {DEBIAN_ROOT}/<version>/bin, "
        "pg_config --bindir). Install the server with `bash scripts/ensure_postgres.sh` "
        "(apt-get install postgresql), or point $CONET_PG_BIN at its bin directory."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: None for ourselves, the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root and there is no {SYSTEM_USER!r} system user to run it as: "
            f"install Debian's postgresql package (it creates the user) or `useradd --system {SYSTEM_USER}`, "
            "or run as an unprivileged user"
        ) from None


def _die_with_parent_hook() -> Callable[[], None]:
    """A preexec_fn asking the kernel to send the server SIGINT (a "fast" shutdown) when we die. Not
    SIGTERM ("smart"), which would wait for clients such as our own orphaned child processes.

    libc is looked up here, in the parent: the hook runs between fork and exec, where loading a
    library could deadlock on a lock another thread held at the fork. It runs after the switch to the
    postgres user, which matters: a credential change would clear the setting."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)

    return hook


def _child_env() -> dict[str, str]:
    # A minimal environment: the server must not pick up our PG* variables (PGDATA, PGPORT …) or locale.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


def _initdb(base: Path, data: Path, password: str, account: pwd.struct_passwd | None) -> None:
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if account is not None:
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    command = [
        str(find_binary("initdb")),
        "--pgdata", str(data),
        "--username", SUPERUSER,
        "--pwfile", str(pwfile),
        "--auth", "scram-sha-256",
        "--encoding", "UTF8",
        "--locale", "C",
        # The cluster is thrown away; skipping initdb's own fsyncs only saves seconds. The server
        # itself runs with fsync on (the default), so commits stay durable as in production.
        "--no-sync",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command,
            cwd=base,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=120,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(f"initdb did not finish within {exc.timeout}s") from exc
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise PostgresError(f"initdb failed with {result.returncode}: {(result.stderr or result.stdout).strip()}")


def _try_connect(port: int, password: str) -> bool:
    """True once the server accepts a login (not just the TCP connection: it may still be starting)."""
    import psycopg

    try:
        with psycopg.connect(
            host="127.0.0.1", port=port, user=SUPERUSER, password=password, dbname="postgres", connect_timeout=2
        ) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def _remove_stale_directories(parent: Path, min_age_seconds: float = 3600.0) -> None:
    """Remove `conet-pg-*` directories that runs killed before they could clean up left behind: older
    than an hour (so a cluster just being created is never touched) and with no live server."""
    now = time.time()
    for candidate in parent.glob("conet-pg-*"):
        try:
            if now - candidate.stat().st_mtime < min_age_seconds:
                continue
            pid_file = candidate / "data" / "postmaster.pid"
            if pid_file.exists():
                pid = int(pid_file.read_text().split("\n", 1)[0])
                try:
                    os.kill(pid, 0)
                    continue  # a server still runs there
                except ProcessLookupError:
                    pass
            shutil.rmtree(candidate, ignore_errors=True)
        except (OSError, ValueError):
            continue


def start_postgres(
    *,
    port: int | None = None,
    base_dir: str | Path | None = None,
    startup_timeout: float = 60.0,
    die_with_parent: bool = True,
    settings: dict[str, str] | None = None,
) -> PostgresServer:
    """Creates a cluster in a fresh directory and starts it on 127.0.0.1; returns once it accepts logins.

    `base_dir` must not exist yet (default: a new directory under the system temp dir). `settings`
    are extra `postgres -c name=value` options. With `die_with_parent` the server is stopped when the
    calling thread exits (Linux), so do not set it when starting from a short-lived thread."""
    account = _run_as()
    postgres_bin = find_binary("postgres")
    if base_dir is None:
        _remove_stale_directories(Path(tempfile.gettempdir()))
        base = Path(tempfile.mkdtemp(prefix="conet-pg-"))
    else:
        base = Path(base_dir)
        base.mkdir(mode=0o700, parents=True)
    try:
        if account is not None:
            # The server's user must own its data directory and be able to reach it: mkdtemp's 0700
            # directory becomes the postgres user's, and /tmp itself is world-searchable.
            os.chown(base, account.pw_uid, account.pw_gid)
        data = base / "data"
        password = secrets.token_urlsafe(24)
        _initdb(base, data, password, account)
        return _launch(postgres_bin, base, data, password, account, port, startup_timeout, die_with_parent, settings)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def _launch(
    postgres_bin: Path,
    base: Path,
    data: Path,
    password: str,
    account: pwd.struct_passwd | None,
    port: int | None,
    startup_timeout: float,
    die_with_parent: bool,
    settings: dict[str, str] | None,
) -> PostgresServer:
    options = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": "",
        # Small, because test machines are shared: the mailbox and bus need little memory.
        "shared_buffers": "32MB",
        "max_connections": "100",
        "fsync": "on",
        "synchronous_commit": "on",
        "log_min_messages": "warning",
        "log_connections": "off",
    }
    options.update(settings or {})
    # A free port can be taken between our probe and the server's bind: try a few before giving up.
    attempts = 1 if port is not None else 3
    last_error = ""
    for _ in range(attempts):
        chosen = port or _free_port()
        command = [str(postgres_bin), "-D", str(data), "-p", str(chosen)]
        for name, value in options.items():
            command += ["-c", f"{name}={value}"]
        log = open(base / "server.log", "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            process = subprocess.Popen(
                command,
                cwd=base,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
                preexec_fn=_die_with_parent_hook() if die_with_parent and sys.platform == "linux" else None,
                # Its own process group: a Ctrl-C in the terminal must reach us, not stop the server under us.
                start_new_session=True,
            )
        finally:
            log.close()
        server = PostgresServer(process=process, port=chosen, password=password, base_dir=base, keep=True)
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                last_error = server.log_tail()
                break
            if _try_connect(chosen, password):
                server.keep = False
                return server
            if time.monotonic() > deadline:
                server.stop()
                raise PostgresError(
                    f"PostgreSQL did not accept logins on 127.0.0.1:{chosen} within {startup_timeout}s:\n"
                    f"{server.log_tail()}"
                )
            time.sleep(0.1)
        if "could not bind" not in last_error and "already in use" not in last_error:
            break
    raise PostgresError(f"PostgreSQL exited while starting:\n{last_error}")


@contextmanager
def running_postgres(
    *, port: int | None = None, settings: dict[str, str] | None = None, startup_timeout: float = 60.0
) -> Iterator[PostgresServer]:
    """A throwaway cluster for the duration of a `with` block."""
    server = start_postgres(port=port, settings=settings, startup_timeout=startup_timeout)
    try:
        yield server
    finally:
        server.stop()
