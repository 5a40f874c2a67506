"""--new-devices at its limit when the data's size is known only once loaded (a --data folder, or
the data run_simulation is handed; tools/simulate/fleet.py, prepare): every client held out
leaves nobody to train and is refused by name; one fewer trains (found by the mutation7-simfleet
audit)."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.simulate.config import sim_config
from fedge.tools.simulate.fleet import load_data, prepare


def test_holding_out_every_client_is_refused_and_one_fewer_is_taken():
    data = load_data(sim_config(dataset="synthetic", devices=4))  # 4 clients; the config says 10 devices
    with pytest.raises(ConfigError, match="--new-devices 4: the data has only 4 clients; some must train"):
        prepare(sim_config(dataset="synthetic", devices=10, new_devices=4), data)
    setup = prepare(sim_config(dataset="synthetic", devices=10, new_devices=3), data)
    try:
        assert len(setup.data.clients) == 1 and len(setup.new_clients) == 3
    finally:
        setup.close()
