"""The non-image integer folder of flags.json: 5 files of int64 features, an age 0..200 and six
0/1 flags, the label set when two of flag0, flag1 and age > 100 hold. python flags.py DIR"""

import sys
from pathlib import Path

import numpy as np


def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    age = rng.integers(0, 201, n)
    flags = rng.integers(0, 2, (n, 6))
    y = ((flags[:, 0] + flags[:, 1] + (age > 100)) >= 2).astype(np.int64)
    return np.column_stack([age, flags]).astype(np.int64), y


def main(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(5):
        (xt, yt), (xs, ys) = draw(rng, 200), draw(rng, 50)
        np.savez(folder / f"dev{i}.npz", x_train=xt, y_train=yt, x_test=xs, y_test=ys)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
