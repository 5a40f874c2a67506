"""The device as a service (`fedge device run`): what it makes on disk and what it logs while it
waits for its broker."""

from __future__ import annotations

import numpy as np


def test_the_device_state_folder_is_made_for_its_user_only(tmp_path):
    """Personal params and residuals live under state_dir/<device>: `fedge device run` makes it
    0700 (outside the installer it was 0755, its files world-readable: a helper's walkthrough)."""
    import stat

    from fedge.edge_runtime.device_config import load_device_config
    from fedge.edge_runtime.run import build_device

    np.savez(tmp_path / "data.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 3)), y_test=np.zeros(2, np.int64))
    (tmp_path / "device.toml").write_text(f'device_id = "pi-a"\nstate_dir = "{tmp_path / "state"}"\n'
                                          f'[data]\nnpz = "{tmp_path / "data.npz"}"\n')
    build_device(load_device_config(tmp_path / "device.toml"))
    assert stat.S_IMODE((tmp_path / "state" / "pi-a").stat().st_mode) == 0o700


def test_a_folder_under_artifacts_named_as_no_model_id_is_skipped_and_the_device_still_checks_in(tmp_path):
    """`artifacts/pending` (a reserved name) or `artifacts/bad name`, each with a manifest, were
    listed as models: the device's CheckIn then failed to encode, so it could never check in."""
    from fedge.edge_runtime.device_config import load_device_config
    from fedge.edge_runtime.kernel.codec import encode_message
    from fedge.edge_runtime.run import build_device

    np.savez(tmp_path / "data.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 3)), y_test=np.zeros(2, np.int64))
    (tmp_path / "device.toml").write_text(f'device_id = "pi-a"\nstate_dir = "{tmp_path / "state"}"\n'
                                          f'[data]\nnpz = "{tmp_path / "data.npz"}"\n')
    for name in ("pending", "standardization.npz", "bad name"):
        (tmp_path / "state" / "pi-a" / "artifacts" / name).mkdir(parents=True)
        (tmp_path / "state" / "pi-a" / "artifacts" / name / "manifest.json").write_text("{}")
    loop, _ = build_device(load_device_config(tmp_path / "device.toml"))
    check_in = loop.agent.runtime.check_in()
    assert check_in.model_ids == ()
    assert encode_message(check_in)


def test_a_device_waiting_for_its_broker_says_so_at_doubling_intervals(caplog):
    """Every poll (0.2 s) once logged "not started yet": 57 lines in 12 s on a Pi's journal."""
    import logging

    from fedge.edge_runtime.kernel.errors import NotConnected
    from fedge.edge_runtime.loop import AgentLoop

    class Away:
        device_id, started = "pi-a", False

        def start(self):
            raise NotConnected("client 'pi-a' has no link")

    loop = AgentLoop(Away())
    with caplog.at_level(logging.INFO, logger="fedge.device.loop"):
        assert not any(loop._start() for _ in range(20))
    assert [r.message.split("(try ")[1].split(")")[0] for r in caplog.records] == ["1", "2", "4", "8", "16"]


def test_device_run_wires_the_state_folder_the_directory_and_a_lock_free_stop(tmp_path, monkeypatch):
    """`_run` hands install_reload the locked folder and [secagg] directory_file (a device whose
    SIGHUP did not reload its directory declined every round drawing a new neighbour), and its
    SIGTERM handler stops the loop from another thread (the loop's Event lock: signal_safe.py)."""
    import signal
    import threading

    from fedge.edge_runtime import run
    from fedge.edge_runtime.device_config import load_device_config

    class Loop:
        agent = object()
        stop_event = threading.Event()

        def run(self):
            pass

        def stop(self):
            self.stop_event.set()

    class Transport:
        def connect(self, timeout):
            pass

        def close(self):
            pass

    np.savez(tmp_path / "data.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 3)), y_test=np.zeros(2, np.int64))
    (tmp_path / "device.toml").write_text(
        f'device_id = "pi-a"\nstate_dir = "{tmp_path / "state"}"\n[data]\nnpz = "{tmp_path / "data.npz"}"\n'
        f'[secagg]\nidentity_file = "{tmp_path / "key"}"\ndirectory_file = "{tmp_path / "ids.json"}"\n')
    cfg = load_device_config(tmp_path / "device.toml")
    loop, handlers, reloads = Loop(), {}, []
    monkeypatch.setattr(run, "build_device", lambda cfg, own=None: (loop, Transport()))
    monkeypatch.setattr(run, "install_reload", lambda *a, **kw: reloads.append((a, kw)))
    monkeypatch.setattr(run.signal, "signal", lambda sig, handler: handlers.__setitem__(sig, handler))
    own = tmp_path / "state" / "pi-a"
    assert run._run(cfg, own) == 0
    (agent, npz, standardize, folder), kw = reloads[0]
    assert folder == own and kw["directory_file"] == str(tmp_path / "ids.json")
    def interrupted():  # the lock held, as by a wait() the signal interrupts: the handler must not need it
        with loop.stop_event._cond:
            handlers[signal.SIGTERM](signal.SIGTERM, None)

    main = threading.Thread(target=interrupted, daemon=True)
    main.start()
    main.join(5)
    assert not main.is_alive(), "the SIGTERM handler waited on the lock its own thread held"
    assert loop.stop_event.wait(5)
