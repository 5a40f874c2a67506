"""The coordinator's guard set in a simulation (SimConfig.guard_fraction): a stratified share
of a shipped dataset that no device holds, disjoint from pretrain's proxy split, written as the
.npz the coordinator's `guard_set` names (coordinator/holdout.py, robust/screening.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedge.tools.datasets import load_shipped, stratified_holdout
from fedge.tools.pretrain import proxy_positions

from .config import SimConfig


def guard_positions(cfg: SimConfig, y: np.ndarray) -> np.ndarray:
    """The guard split of the shipped dataset's labels `y`: a stratified cfg.guard_fraction from its
    own stream of the seed, less the proxy split (so the two never share an example)."""
    guard, _ = stratified_holdout(y, cfg.guard_fraction, np.random.default_rng([cfg.seed, 0x6A4D]))
    if cfg.proxy_fraction:
        guard = np.setdiff1d(guard, proxy_positions(y, cfg.proxy_fraction, cfg.seed))
    return np.sort(guard)


def write_guard_set(cfg: SimConfig, folder: Path) -> str:
    """The guard split as the coordinator's guard_set .npz (x, y) in `folder`; its path."""
    x, y = load_shipped(cfg.dataset)
    keep = guard_positions(cfg, y)
    path = folder / "guard_set.npz"
    np.savez(path, x=x[keep], y=y[keep])
    return str(path)


def held_back(cfg: SimConfig) -> np.ndarray | None:
    """Positions of the shipped dataset no device gets: pretrain's proxy split (tools/pretrain.py)
    and the guard split; None when there are none."""
    if not (cfg.proxy_fraction or cfg.guard_fraction):
        return None
    y = load_shipped(cfg.dataset)[1]  # read once: the file is parsed on every load
    parts = []
    if cfg.proxy_fraction:
        parts.append(proxy_positions(y, cfg.proxy_fraction, cfg.seed))
    if cfg.guard_fraction:
        parts.append(guard_positions(cfg, y))
    return np.unique(np.concatenate(parts))
