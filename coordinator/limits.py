"""Upper bounds on the counts an operator's config sets, checked when the config loads.

A round's target and quorum, an async buffer's K and its concurrency are stored as SQLite
INTEGERs and compared with real fleets: 10**30 (a typo, or a TOML value pasted in the wrong
field) ended the first async buffer in `OverflowError: Python int too large to convert to
SQLite INTEGER`, and a sync round asking for 10**30 reports could never reach its quorum. A
million devices in one round is past any fleet fedge runs (issue 14's largest is 10,000
devices, 100 per round); the wire caps a task's epochs at the same number."""

MAX_FLEET = 1_000_000  # devices one round or buffer asks for, holds or keeps in flight
# max_devices' bound, 10 x MAX_FLEET: a registry of 10 million is about 2 GB of memory, 0.6 GB of
# state db and most of a second per selection (registry_cap.py measures it); more is a typo.
MAX_REGISTRY = 10_000_000
MAX_CC_ITERATIONS = 100  # centered clipping's inner loop (Karimireddy et al. 2021 use 1 to 3): each runs over the round
MAX_SECURITY_BITS = 128  # SecAgg's sigma and eta: 2^-128 is past any float; more only grows the graph
