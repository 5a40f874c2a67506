"""Broker users of a sharded fleet's aggregator workers: `fedge-shard-0` .. `fedge-shard-{K-1}`.

The shipped configs set use_username_as_clientid, so a client's id is its username. Every
coordinator process logging in as `coordinator` would then share one client id and knock the
others off the broker; the worker of shard k logs in as `fedge-shard-k` instead, which is also
the fixed client id its persistent session is kept under (a spare that takes the shard takes
the session and the updates queued in it).

A Mosquitto ACL `user` line takes no wildcard and a `pattern` line applies to every user, so
the workers' rights are K `user` blocks, written when K is known (`fedge provision broker
--shards K`). Worker k may read only its shard's uploads and write only devices' Acks: what
coordinator/sharding/worker.py subscribes to and publishes, nothing of the leader's. The devices'
upload grants are written with them, one pattern line per shard: a `shard/+` grant would let a
device park retained messages on any number of made-up shard topics.
"""

from __future__ import annotations

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import (
    MAX_SHARDS,
    SHARD_CLIENT_PREFIX,
    all_devices_topic,
    shard_client_id,
    shard_update_topic,
    shard_updates_filter,
)

SHARD_USER_PREFIX = SHARD_CLIENT_PREFIX  # the username is the client id


def shard_users(shards: int) -> list[str]:
    """The usernames of a fleet with `shards` shards, in shard order."""
    if not 0 <= shards <= MAX_SHARDS:
        raise ConfigError(f"--shards must be in [0, {MAX_SHARDS}], got {shards}")
    return [shard_client_id(k) for k in range(shards)]


def is_shard_user(name: str) -> bool:
    """Whether `name` is the user of some shard's worker (fedge-shard-k, k in [0, MAX_SHARDS))."""
    k = name[len(SHARD_USER_PREFIX):]
    return (name.startswith(SHARD_USER_PREFIX) and k.isascii() and k.isdigit() and int(k) < MAX_SHARDS
            and shard_client_id(int(k)) == name)


def shard_acl(shards: int) -> str:
    """The devices' upload grants and the workers' blocks of `shards` shards ("" for none),
    appended to fedge.acl (a pattern line applies to every user wherever it stands)."""
    users = shard_users(shards)  # its range check first: past it, shard_update_topic's ValueError
    if shards == 0:
        return ""
    lines = ["", f"# A sharded fleet of {shards} shard(s), written by `fedge provision broker --shards {shards}`:",
             "# each device may upload to any of the shards' topics, no other (the note on shard uploads above);"]
    lines += [f"pattern write {shard_update_topic(k, '%u')}" for k in range(shards)]
    lines += ["# each aggregator worker reads its own shard's uploads and acknowledges the devices it counted."]
    for k, user in enumerate(users):
        lines += [f"user {user}", f"topic read {shard_updates_filter(k)}", f"topic write {all_devices_topic('ack')}"]
    return "\n".join(lines) + "\n"
