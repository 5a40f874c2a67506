"""Two cases run in this order by tests/test_logging_isolation.py, in a pytest of their own (the
file has no test_ prefix: the suite does not collect it). The first does what many CLI tests do:
fedge's main() in-process under capsys, whose logging setup binds a StreamHandler on the root
logger to capsys's stream, closed when that test ends. The second logs from a thread, as a
server of a later test does."""

import logging
import threading

from fedge.tools.cli import main


def test_a_cli_main_in_process(capsys, tmp_path):
    assert main(["device", "init", "--out", str(tmp_path / "d.toml"), "--id", "a/b"]) == 2
    assert "fedge: error:" in capsys.readouterr().err


def test_a_later_thread_logs(capsys):
    thread = threading.Thread(target=logging.getLogger("fedge.coordinator").warning, args=("from a thread",))
    thread.start()
    thread.join()
    assert "Logging error" not in capsys.readouterr().err
