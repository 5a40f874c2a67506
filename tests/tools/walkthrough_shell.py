"""Runs README lines one at a time the way a person at a shell does: each in bash, in the
working directory the previous lines left (so `cd fleet` carries over), `cmd &` started in the
background and left running until stop_all(), which stops them by pid, newest first."""

from __future__ import annotations

import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

FOREGROUND_TIMEOUT_S = 300  # building the model's artifacts is the slowest line
STOP_TIMEOUT_S = 15


@dataclass
class Background:
    command: str
    process: subprocess.Popen
    log: Path

    def exit_code(self) -> int | None:
        return self.process.poll()


@dataclass
class Shell:
    cwd: Path
    env: dict[str, str]
    logs: Path  # one file per background process
    started: list[Background] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)

    def run(self, command: str) -> subprocess.CompletedProcess:
        """Run one line in bash (pipefail: a failing `curl` in `curl | grep` fails the line);
        the directory it ends in becomes the next line's."""
        where = self.logs / "cwd"
        script = f'{command}\n__status=$?\npwd > "{where}"\nexit $__status\n'
        done = subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=FOREGROUND_TIMEOUT_S)
        self.cwd = Path(where.read_text().strip())
        return done

    def start(self, command: str) -> Background:
        """`command &`: bash execs the command, so its pid is the process to stop."""
        log = self.logs / f"{len(self.started):02d}-{_slug(command)}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.cwd, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT)
        self.started.append(Background(command, process, log))
        return self.started[-1]

    def stop_all(self) -> None:
        """SIGTERM each background process, newest first (the devices before the coordinator
        before the broker); a process that does not exit in time is killed."""
        for job in reversed(self.started):
            if job.process.poll() is None:
                job.process.send_signal(signal.SIGTERM)
                try:
                    job.process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    job.process.kill()
                    job.process.wait()

    def tails(self, chars: int = 2500) -> str:
        """The end of every background process's log, for an assertion message."""
        return "\n".join(f"== {job.command} (exit {job.exit_code()})\n{job.log.read_text(errors='replace')[-chars:]}"
                         for job in self.started)


def _slug(command: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", command).strip("-")[:60]
