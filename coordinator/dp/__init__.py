"""User-level differential privacy for the shared model (DP-FedAvg, McMahan et al. 2018).

    config.PrivacyConfig   [coordinator.privacy]: target ε, δ, z (or rounds to calibrate it), S,
                           adaptive clipping; check_coordinator: what privacy refuses, and why
    mechanism              clip a delta to S; Gaussian noise N(0, (zS)^2) on the sum; fixed denominator
    accountant             ε of a ledger of rounds by dp-accounting (RDP or PLD); the refusal check
    calibrate              the z that spends a target ε in a given number of rounds
    round                  a round's RoundPlan and its aggregator DpMean (with adaptive clipping)
    budget                 before each round: plan it or refuse it; the fedge_privacy_* gauges
    distributed            mechanism = "distributed": the discrete Gaussian shares' gamma and sigma
                           under secure aggregation, the field's headroom, the z they are charged as
    report                 `fedge coordinator privacy --state DB`

mechanism, accountant, calibrate and round are pure: numpy in, numpy out, RNG passed in, no
I/O, no clock. The unit of privacy is a device (user-level): each round a device contributes
at most one clipped delta. The coordinator hooks in through Coordinator.privacy (server.py),
OpenRound.privacy (records.py) and the store's privacy_ledger (store.py).
"""
