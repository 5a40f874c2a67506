"""A local ejabberd MQTT cluster: N nodes on one machine, for tests, benchmarks and drills.

Nodes are started as plain `erl` processes (what `ejabberdctl foreground` runs), not through
ejabberdctl or the system service: ejabberdctl switches to the ejabberd user and its
/var/lib/ejabberd spool, and the Debian service would hold epmd's and MQTT's default ports.
Each node runs the shipped config (hardware/ejabberd/ejabberd.yml) with its own MQTT port,
and has its own spool and log folder. The cluster brings its own epmd on a free loopback
port (what ERL_EPMD_ADDRESS=127.0.0.1 does for the shipped setup), and Erlang distribution
listens on loopback only; every process is a child of the caller, stopped by pid.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedge.edge_runtime.kernel.transport.settings import MqttSettings

from .ejabberd_shards import ejabberd_config, shipped_config
from .process import free_port

INSTALL_HINT = "install it with `apt-get install ejabberd` (Debian bookworm: 23.01)"
START_TIMEOUT_S = 60.0


def find_ejabberd() -> tuple[str, str] | None:
    """(erl, ERL_LIBS folder holding ejabberd-*), or None when ejabberd is not installed."""
    erl = shutil.which("erl")
    apps = sorted(glob.glob("/usr/lib/*/ejabberd-*/ebin/ejabberd.app")) + sorted(
        glob.glob("/usr/lib/erlang/lib/ejabberd-*/ebin/ejabberd.app"))
    if erl is None or not apps:
        return None
    return erl, str(Path(apps[-1]).parents[2])


def node_config(mqtt_port: int, shards: int = 0) -> str:
    """The shipped config with this node's MQTT port, and the upload grants of `shards` shards
    as `fedge provision ejabberd --shards K` writes them: the only changes a local cluster makes."""
    text = ejabberd_config(shards)
    if "  MQTT_PORT: 1883\n" not in text:
        raise RuntimeError(f"{shipped_config()} must define the MQTT_PORT macro (1883)")
    return text.replace("  MQTT_PORT: 1883\n", f"  MQTT_PORT: {mqtt_port}\n")


@dataclass
class EjabberdNode:
    name: str  # Erlang node name, e.g. fedge1-1a2b@localhost
    port: int  # MQTT port on 127.0.0.1
    home: Path  # config, spool and logs
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        out = []
        for name in ("stdout.log", "ejabberd.log"):
            path = self.home / name
            if path.exists():
                out.append(f"--- {path}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)


@dataclass
class EjabberdCluster:
    erl: str
    erl_libs: str
    root: Path
    shards: int = 0  # the devices may upload to shards 0 .. shards - 1 (ejabberd_shards.py)
    cookie: str = field(default_factory=lambda: secrets.token_hex(16))
    epmd_port: int = field(default_factory=free_port)
    nodes: list[EjabberdNode] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)
    _epmd: subprocess.Popen | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, count: int = 2) -> EjabberdCluster:
        epmd = shutil.which("epmd") or str(Path(self.erl).parent / "epmd")
        self._epmd = subprocess.Popen([epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tag = secrets.token_hex(3)
        for i in range(1, count + 1):
            node = EjabberdNode(f"fedge{i}-{tag}@localhost", free_port(), self.root / f"node{i}")
            (node.home / "spool").mkdir(parents=True)
            (node.home / "ejabberd.yml").write_text(node_config(node.port, self.shards))
            self.nodes.append(node)
        for node in self.nodes:  # in parallel: each takes seconds
            self._launch(node)
        for node in self.nodes:
            self._wait_up(node)
        for node in self.nodes[1:]:
            self.ctl(node, "join_cluster", self.nodes[0].name)
        self._wait(lambda: all(n.name in self.ctl(self.nodes[0], "list_cluster") for n in self.nodes),
                   "every node in list_cluster", self.nodes[0])
        for node in self.nodes:
            self._wait_up(node)  # join_cluster restarts the joining node's applications
        self.register("coordinator")
        return self

    def close(self) -> None:
        for node in self.nodes:
            self._stop(node)
        if self._epmd is not None and self._epmd.poll() is None:
            self._epmd.kill()
            self._epmd.wait(10)

    def kill(self, index: int) -> None:
        """kill -9 node `index` (0-based): a lost node, as a power cut would leave it."""
        node = self.nodes[index]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

    # ------------------------------------------------------------------ users and clients

    def register(self, user: str, password: str | None = None) -> str:
        """Register an MQTT user (host "fedge"); registered once, it may connect to every node."""
        password = password or secrets.token_urlsafe(12)
        self.ctl(self.nodes[0], "register", user, "fedge", password)
        self.passwords[user] = password
        return password

    def register_many(self, users: list[str]) -> None:
        """Register many users through one Erlang process (register() starts one per user, a
        second or more each): rpc calls of ejabberd_auth:try_register on node 1, checked."""
        passwords = {u: secrets.token_urlsafe(12) for u in users}
        node = self.nodes[0]
        calls = ",".join(f"R{i} = rpc:call('{node.name}', ejabberd_auth, try_register, "
                         f"[<<\"{u}\">>, <<\"fedge\">>, <<\"{p}\">>]), io:format(\"~p~n\", [R{i}])"
                         for i, (u, p) in enumerate(passwords.items()))
        done = subprocess.run([self.erl, "-sname", f"reg-{secrets.token_hex(3)}@localhost", "-setcookie", self.cookie,
                               "-hidden", "-noinput", "-start_epmd", "false", "-eval", f"{calls}, init:stop()."],
                              env=self._env(node), capture_output=True, text=True, timeout=120)
        results = done.stdout.split()
        if done.returncode != 0 or results != ["ok"] * len(users):
            raise RuntimeError(f"register_many on {node.name}: rc {done.returncode}: {done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}")
        self.passwords.update(passwords)

    def settings(self, user: str, node: int = 0, **kwargs) -> MqttSettings:
        """Settings for `user` starting at node `node`, with the other nodes as fallback_urls."""
        urls = [n.url for n in self.nodes]
        first = urls.pop(node)
        base = MqttSettings(url=first, fallback_urls=tuple(urls), username=user, password=self.passwords[user])
        return replace(base, **kwargs)

    # ------------------------------------------------------------------ helpers

    def ctl(self, node: EjabberdNode, *args: str) -> str:
        """An ejabberdctl command against `node` (what ejabberdctl runs, without its su)."""
        ctl_name = f"ctl-{secrets.token_hex(3)}@localhost"
        done = subprocess.run([self.erl, "-sname", ctl_name, "-setcookie", self.cookie, "-hidden", "-noinput",
                               "-start_epmd", "false", "-s", "ejabberd_ctl", "-extra", node.name, *args],
                              env=self._env(node), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"ejabberdctl {' '.join(args)} on {node.name}: rc {done.returncode}: "
                               f"{done.stdout}{done.stderr}\n{node.log_tail()}")
        return done.stdout

    def _env(self, node: EjabberdNode) -> dict[str, str]:
        return {**os.environ, "ERL_EPMD_PORT": str(self.epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
                "ERL_LIBS": self.erl_libs, "EJABBERD_CONFIG_PATH": str(node.home / "ejabberd.yml"),
                "EJABBERD_LOG_PATH": str(node.home / "ejabberd.log"), "HOME": str(node.home)}

    def _launch(self, node: EjabberdNode) -> None:
        cmd = [self.erl, "-sname", node.name, "-setcookie", self.cookie, "-noinput", "-start_epmd", "false",
               "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
               "-mnesia", "dir", f'"{node.home / "spool"}"', "-s", "ejabberd"]
        # erl execs beam.smp, so this pid is the node's: kill() reaches the node itself.
        node.proc = subprocess.Popen(cmd, env=self._env(node), cwd=node.home, stdin=subprocess.DEVNULL,
                                     stdout=open(node.home / "stdout.log", "ab"), stderr=subprocess.STDOUT)

    def _wait_up(self, node: EjabberdNode) -> None:
        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", node.port), timeout=1):
                    return True
            except OSError:
                return False

        self._wait(listening, f"{node.name} listening on MQTT port {node.port}", node)
        self._wait(lambda: "started" in self._status(node), f"{node.name} started", node)

    def _status(self, node: EjabberdNode) -> str:
        try:
            return self.ctl(node, "status")
        except RuntimeError:
            return ""

    def _wait(self, predicate, what: str, node: EjabberdNode) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited ({node.proc.returncode}) waiting for {what}\n"
                                   f"{node.log_tail()}")
            if predicate():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {START_TIMEOUT_S:g} s waiting for {what}\n{node.log_tail()}")

    def _stop(self, node: EjabberdNode) -> None:
        if node.proc is None or node.proc.poll() is not None:
            return
        node.proc.terminate()
        try:
            node.proc.wait(10)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(10)
