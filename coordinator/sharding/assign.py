"""Which shard counts each selected device's update in a round: the leader's choice. Pure.

    home(d)        = crc32(d) mod K  (config.shard_for)
    assign(round)  = home(d) when that shard has a live worker, else the least-loaded live
                     shard; load = devices of the round assigned there so far, ties to the
                     lowest index; the devices placed away from home in sorted id order

so the assignment is a fixed function of (selected, K, live shards): without failures it is
the static hash every worker could compute, and a dead shard's devices spread evenly over the
live ones. Mid-round (leader.py) the devices of a shard whose worker died are placed with
`place`, loads being the round's current assignment. The leader stores the result with the
round (tables.py: shard_assignment), the workers count only what it assigns them, and the
tasks name it (TrainTask.shard).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .config import shard_for


def place(devices: Iterable[str], loads: Mapping[int, int], live: Iterable[int]) -> dict[str, int]:
    """Each device (in sorted order) onto the live shard with the fewest devices so far, ties to
    the lowest index; `loads`: devices already on each shard (absent = 0). ValueError: none live."""
    count = {k: loads.get(k, 0) for k in sorted(set(live))}
    if not count:
        raise ValueError("no live shard to place devices on")
    out = {}
    for device_id in sorted(devices):
        shard = min(count, key=lambda k: (count[k], k))
        out[device_id] = shard
        count[shard] += 1
    return out


def assign(selected: Iterable[str], shards: int, live: Iterable[int]) -> dict[str, int]:
    """device -> shard for a round (module docstring). ValueError: no shard is live."""
    live = frozenset(live)
    out, away, loads = {}, [], dict.fromkeys(range(shards), 0)
    for device_id in selected:
        home = shard_for(device_id, shards)
        if home in live:
            out[device_id] = home
            loads[home] += 1
        else:
            away.append(device_id)
    if away:
        out.update(place(away, loads, live))
    return out
