"""User-level differential privacy for the shared model (DP-FedAvg, McMahan et al. 2018).

    config.PrivacyConfig   the `[privacy]` table: target ε, δ, noise multiplier z, clip S, sampling
    mechanism              clip a delta to S; Gaussian noise N(0, (zS)^2) on the sum; fixed denominator
    accountant             ε of a ledger of rounds by dp-accounting (RDP or PLD); the refusal check
    calibrate              the z that spends a target ε in a given number of rounds

All pure: numpy in, numpy out, RNG passed in, no I/O, no clock. The unit of privacy is a
device (user-level): each round a device contributes at most one clipped delta.
"""
