"""Secure aggregation on the coordinator: config (config.py), the round's four stages
(stages.py), the protocol state of one round (round_state.py) and the thin shell the server
calls (shell.py). The math is the shared kernel's (fedge.edge_runtime.kernel.secagg)."""
