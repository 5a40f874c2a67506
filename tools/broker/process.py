"""Run a local Mosquitto: for tests, for `fedge simulate --transport mqtt`, for fault drills.

    with MosquittoProcess() as broker:            # open loopback broker on a free port
        client.connect("127.0.0.1", broker.port)  # or parse broker.url

The broker is a child process stopped by pid (SIGTERM, then SIGKILL). Its config, ACL,
persistence data and log live in one work dir, a private temp dir unless one is given, so
`kill9()` then `restart()` brings back the same broker on the same port with the same data.
No pytest here: the simulator imports this module.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .config import BrokerConfig, check_work_folder, write_config
from .errors import BrokerStartFailed, BrokerUnavailable

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; only for annotations here

SBIN_MOSQUITTO = "/usr/sbin/mosquitto"  # Debian puts the broker in sbin, often off a user's PATH
INSTALL_HINT = "install Debian's package: apt-get install mosquitto"
_BIND_RETRIES = 5  # a port from free_port() can still be taken before mosquitto binds it
_PRIVATE_LOW = 20000  # free_port() picks from here up to the ephemeral range


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (PATH first, then /usr/sbin), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return SBIN_MOSQUITTO if os.access(SBIN_MOSQUITTO, os.X_OK) else None


def require_mosquitto() -> str:
    """Like find_mosquitto, but raises BrokerUnavailable naming the package to install."""
    found = find_mosquitto()
    if found is None:
        raise BrokerUnavailable(f"no mosquitto binary on PATH or at {SBIN_MOSQUITTO}; {INSTALL_HINT}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nobody has bound right now, below the ephemeral range if possible.

    Why not just bind port 0: that port comes from the ephemeral range, where every outgoing
    connection also takes its source port. On a busy machine (a benchmark with thousands of
    clients) one of them can take it in the moment before mosquitto binds it.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(50):
        port = rng.randrange(_PRIVATE_LOW, low) if low > _PRIVATE_LOW + 100 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _PRIVATE_LOW  # unknown (not Linux): let the kernel pick


class MosquittoProcess:
    """One mosquitto child process. A context manager; also start()/stop()/close() by hand.

    config: a BrokerConfig (port 0 = pick a free port; data_dir "" = the work dir).
    workdir: where config, ACL, data and log go; None = a temp dir removed by close().
    """

    def __init__(self, config: BrokerConfig | None = None, *, workdir: str | Path | None = None,
                 binary: str | None = None, start_timeout_s: float = 10.0):
        self._config = config or BrokerConfig()
        self._text: str | None = None  # a caller-written config (from_text)
        self._scheme: str | None = None  # from_text's; else the config's
        self._binary = binary
        self._start_timeout_s = start_timeout_s
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="fedge-mosquitto-") if workdir is None else workdir)
        self._proc: subprocess.Popen | None = None
        self._port = self._config.port

    @classmethod
    def from_text(cls, text: str, port: int, *, host: str = "127.0.0.1", scheme: str = "mqtt",
                  workdir: str | Path | None = None, binary: str | None = None,
                  start_timeout_s: float = 10.0) -> Self:
        """Run a config written elsewhere (e.g. a shipped file); wait on `port` at `host`."""
        broker = cls(BrokerConfig(port=port, host=host, persistence=False), workdir=workdir, binary=binary,
                     start_timeout_s=start_timeout_s)
        broker._text = text
        broker._scheme = scheme
        return broker

    # -- where it is -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._config.host

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{self._scheme or self._config.scheme}://{self.host}:{self._port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def log_text(self) -> str:
        """Everything the broker logged, across restarts."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self.running:
            return self
        binary = self._binary or require_mosquitto()
        pick = self._port == 0
        for attempt in range(_BIND_RETRIES if pick else 1):
            if pick:
                self._port = free_port(self.host)
            conf = self._write_config()
            if self._launch(binary, conf, last=attempt == _BIND_RETRIES - 1 or not pick):
                return self
        raise AssertionError("unreachable")  # _launch raises on the last attempt

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (mosquitto saves its persistence db), then SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no persistence save (what a power cut does to the broker)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads the password file and the ACL (new devices, revocations)."""
        if self.running:
            self._proc.send_signal(signal.SIGHUP)

    def restart(self) -> Self:
        """Stop (gracefully, if still running) and start again on the same port and data dir."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the work dir if this object made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _write_config(self) -> Path:
        if self._text is not None:  # the same guard as write_config's: an earlier render is fedge's too
            path = self.workdir / "mosquitto.conf"
            check_work_folder({path: self._text.encode()})
            self.workdir.mkdir(parents=True, exist_ok=True)
            path.write_text(self._text, encoding="utf-8")
            return path
        data_dir = self._config.data_dir or str(self.workdir / "data")
        if self._config.persistence:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        cfg = dataclasses.replace(self._config, port=self._port, data_dir=data_dir)
        return write_config(cfg, self.workdir)

    def _launch(self, binary: str, conf: Path, last: bool) -> bool:
        """Start the process and wait for its port; False = lost a port race, try another."""
        start_of_log = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                lost_race = "Address already in use" in self.log_text()[start_of_log:]
                self._proc = None
                if lost_race and not last:
                    return False
                raise BrokerStartFailed(f"mosquitto exited at start (config {conf}).\n{self._log_tail()}")
            if _accepts(self.host, self._port):
                return True
            time.sleep(0.02)
        self.kill9()
        raise BrokerStartFailed(f"mosquitto did not accept connections on {self.host}:{self._port} within "
                                f"{self._start_timeout_s:g} s (config {conf}).\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return "broker log (last lines):\n  " + "\n  ".join(tail) if tail else "broker log is empty"


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
