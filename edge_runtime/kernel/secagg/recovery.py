"""The coordinator's side of the unmask stage: secrets back from the survivors' shares.

A holder may answer with wrong share values (any field element passes the message's checks).
Each secret is rebuilt from t shares and checked with LIARS (2, below) more where there are
that many (shamir's InconsistentShares), and a dropped device's mask key against the key it
advertised. A self seed has no commitment: colluders can move its polynomial knowing only their
own shares (adding one that vanishes at t - 1 honest holders' points). With one spare share two
of them among the first t + 1 passed the check, the moved seed was used, and the sum came out
off by PRG(b) - PRG(b'): uniform, not chosen (they know b' - b, not b), yet decoded and
committed. Another polynomial passes at most t - 1 honest shares, so t + LIARS on one take
LIARS + 1 liars. Where an owner has fewer holders (h - t < LIARS: k = 4, or dropouts) LIARS
colluders can move its seed through every share there is, and only the sum can show it: the
coordinator refuses one the survivors' inputs cannot add up to (shared_encoding.implausible).
When a check fails, wrong_holders looks for the one holder whose shares explain every failure: its
answer is left out and the sum unmasked again from the others' shares; if no single holder
explains them, decoded_liars looks for several (below); if they do not either, the round cannot
be unmasked (UnmaskFailed), rather than commit a wrong sum. A failing self seed counts as
verified without the holder only from t + LIARS shares on one polynomial: from t + 1 (h - t =
2: k = 5 or 6, or larger cohorts with dropouts) two colluders moving it through t - 1 honest
shares had the honest holder left off it named and the moved seed used. So, under distributed
DP, one holder is not named for a self seed where h - t <= LIARS (a dropped device's mask key
still shows one), and such a round is abandoned with no one named.
The sum check: without distributed DP (unmask_answers' `check`) every sum is checked before
anyone is named, and the verdicts need withstand only LIARS - 1 liars: a self seed counts as
verified from t + 1 shares on one polynomial, a decoded one where h - t + 1 - d > LIARS - 1. So
one liar is named again where h - t = 2 (complete graphs of 6 or 7 devices, the default 10 with 2
dropped), and the round commits the exact sum: from ea5d2bb it stalled there, no one named.
Two colluders moving a seed through t - 1 honest shares have the moved seed used and the honest
holder off it picked, but the sum is then off by a uniform field vector, each coordinate above
the bound n * (2^b - 2) with probability 1 - n(2^b - 2) / 2^m, about 1 - n / 2^ceil(log2 N) for
n in the sum of N asked (shared_encoding.implausible: 25% and 12.5% at 6 and 7 devices, 50% at
8 of 10), so it is refused (ImplausibleSum) before the holder is named. The check is weak where
n is a power of two and nobody dropped (2^(1 - b) a coordinate: with d = 10^5 coordinates at
b = 16 the garbage passes with probability 0.05, and the honest holder is named, not sidelined),
and weaker the closer n is under a power of two (0.1% a coordinate at 1,023 of 1,024).
Under distributed DP any field element is a possible sum, nothing is checked, and LIARS holds.
A holder so named either answered wrong or was dealt wrong shares by the owner: the shares
alone cannot tell which, so it is named, not punished (coordinator/sidelined.py).

Several lying holders: decoded_liars decodes each failing secret's h shares (decode.py,
Reed-Solomon decoding: the one polynomial of degree < t that all but e = (h - t) // 2 of them
lie on). With at most e of its holders lying it is the one the owner dealt, and the shares off
it are the wrong ones: they alone are left out, the sum is unmasked from the rest, and each
holder that sent one is named as one wrong holder is (left_out). Before, two holders lying
about any owners abandoned every round they were drawn into, unnamed. A decoded polynomial is
used only where it can be trusted: a mask key's must give the key the owner advertised. A self
seed has no commitment, and colluders can shift its polynomial knowing only their own shares
(by one that vanishes at t - 1 honest holders' points); another polynomial agrees with the
dealt one at t - 1 points at most, so h - t + 1 - d of the answers would be lies (d: those off
the decoded one): it is used only where that is more than LIARS (below), so LIARS colluders
cannot have a wrong seed used, nor an honest holder named, this way. More can, where
h - t + 1 - e of them suffice (3 at h - t = 4), as they can frame a dealer (below); e + 1 at random
leave no polynomial within e, and the round is abandoned. Past MAX_DECODES failing secrets (a
lying holder fails every secret it holds a share of) none is decoded, as before.

When neither one holder nor decoding explains the failures, wrong_dealers looks at the owner: a device
that deals shares of no one polynomial (or of a mask key other than the one it advertised)
makes its secret fail whoever answers, and would abandon every secure round it is drawn into,
unnamed. Its h shares are decoded (decode.py, Reed-Solomon decoding): with at most e = (h - t) // 2
of its holders lying the decoded polynomial is the one it dealt. But colluding holders can
make an honest owner's shares look just as wrong, and the owner named is sidelined
(coordinator/sidelined.py): the rule must not let a few liars evict honest devices. So an owner
is named only when its shares cannot be explained by up to LIARS = 2 lying holders, nor by e:

- no polynomial within e of them: only if e >= LIARS (more than e liars could have done it);
- one polynomial P, d of them off it, and P gives a mask key the owner did not advertise: the
  advertised key's polynomial differs from P at h - t + 1 points or more, so at least
  h - t + 1 - d of the answers would be lies; named only if that is more than LIARS (and it is
  more than e, since d <= e).

Before, e >= 1 was enough, and at the default cohort sizes (complete graphs, t = k // 2 + 1:
e = 1 at k = 5 to 8, and at k = 9 or 10 with a holder dropped) two devices answering wrong
shares of one honest device's secret, and right ones of every other, had it sidelined. LIARS
is an assumption, not a bound any config sets: LIARS + 1 colluding holders of one owner can
still frame it where e = LIARS (k = 9 to 12), and framing takes e + 1 past that; a larger LIARS
would leave wrong dealers unnamed in every cohort below k ~ 4 * LIARS. Other ways weighed:
verifiable shares (each holder's answer checked against a commitment the dealer made) would
settle it, but no message carries one (messages.py: sealed boxes the coordinator cannot open,
and one public key per device, which checks only a whole mask secret), and adding them is a
protocol change; naming no owner ever would let one wrong dealer abandon every round it is
drawn into. Where the shares are ambiguous no one is named: the round is abandoned with the
reason (unmask_answers: Unexplained, which coordinator/metrics.py counts), and no one is
sidelined. No owner is named either when the failures are spread the way lying holders spread
them (wrong_dealers)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np

from . import shamir
from .decode import decode
from .keys import keypair_from_seed
from .masking import unmask

LIARS = 2  # lying holders an owner's naming must withstand (module docstring)


class UnmaskFailed(ValueError):
    """Fewer than t shares for a secret the sum needs: the round cannot be unmasked."""


class WrongShares(UnmaskFailed):
    """Some holder's shares of a secret are wrong (off their polynomial, or giving a mask key the
    owner did not advertise)."""


class Unexplained(UnmaskFailed):
    """Wrong shares that no single holder, no decoding and no dealer explains: the round cannot
    be unmasked and no one is named (colluding holders can stall rounds so; metrics count it)."""


class ImplausibleSum(Unexplained):
    """An unmasked sum that the survivors' inputs cannot add up to (shared_encoding.implausible):
    a self seed moved where too few shares could show it (module docstring), or a device that
    masked values off the shared encoding. The round is abandoned and no one is named."""


def gather_shares(answers: Mapping[str, Mapping[str, tuple[str, int]]], cohort: tuple[str, ...], threshold: int,
                  alive: tuple[str, ...], dropped: tuple[str, ...], spare: int = 1) -> dict[str, tuple[str, tuple]]:
    """owner -> (kind, `threshold` + `spare` of its shares as (x, y) pairs, fewer where fewer
    came) from the unmask answers (answering device -> owner -> (kind, share value)): "self" for
    the alive, "mask" for the dropped. A share of the wrong kind for its owner is ignored: a
    device reveals only one kind per owner, and the coordinator must not mix. Reconstruction
    uses t and checks the spare ones against them; they are kept as plain ints: they are pickled
    to the unmask's workers, and Share objects cost ten times as much to pickle. Raises
    UnmaskFailed when some owner has fewer than `threshold` (checked before any reconstruction:
    the round fails fast)."""
    points = {d: i + 1 for i, d in enumerate(sorted(cohort))}  # session.point_of, without a scan per holder
    wanted = {d: "self" for d in alive} | {d: "mask" for d in dropped}
    shares: dict[str, list[tuple[int, int]]] = {d: [] for d in wanted}
    for holder, revealed in answers.items():
        x = points[holder]
        for owner, (kind, y) in revealed.items():
            if wanted.get(owner) == kind:
                shares[owner].append((x, y))
    for owner, kind in wanted.items():
        if len(shares[owner]) < threshold:
            raise UnmaskFailed(f"{len(shares[owner])} {kind} shares of {owner}, need {threshold}")
    return {owner: (kind, tuple(shares[owner][:threshold + spare])) for owner, kind in wanted.items()}


def secret_from(threshold: int, kind: str, owner: str, shares, *, packing: int,
                mask_publics: Mapping[str, bytes] | None = None) -> bytes:
    """The self-mask seed ("self") or the mask private key ("mask") `shares` ((x, y) pairs)
    reconstruct (`packing`: graph.packing_for, as they were shared). With
    `mask_publics` (dropped device -> the mask public key it advertised), a mask key that is not
    the advertised one raises UnmaskFailed: some holder sent a wrong share. (A self-mask seed
    has no public commitment: a wrong share there gives a wrong sum, as in Bonawitz et al.)"""
    try:
        secret = shamir.recover_seed(shares, threshold, packing)
    except shamir.InconsistentShares as exc:
        raise WrongShares(f"{kind} secret of {owner}: {exc}") from None
    except ValueError as exc:  # a share that was not the owner's (a wrong value from some holder)
        raise UnmaskFailed(f"{kind} secret of {owner}: {exc}") from None
    if kind == "self":
        return secret
    pair = keypair_from_seed(secret)  # the mask seed stands for the key pair
    if mask_publics is not None and mask_publics.get(owner) != pair.public:
        raise WrongShares(f"mask secret of {owner}: the shares give a key it did not advertise (a wrong share)")
    return pair.private


def unmask_answers(masked_sum: np.ndarray, answers: Mapping[str, Mapping[str, tuple[str, int]]],
                   cohort: tuple[str, ...], threshold: int, alive: tuple[str, ...], dropped: tuple[str, ...],
                   dropped_peers: Mapping[str, Mapping[str, bytes]], round_id: int, field_bits: int, *,
                   packing: int, workers: int = 1, mask_publics: Mapping[str, bytes] | None = None,
                   left_out: set[str] | None = None, dealers: set[str] | None = None,
                   check: Callable[[np.ndarray], str | None] | None = None) -> np.ndarray:
    """The survivors' self seeds and the dropped devices' mask keys (secret_from), then masking.unmask,
    with each secret reconstructed in the worker that expands its masks (a thousand reconstructions from
    t = 113 packed shares are about 1 s of one core at n = 1,000: 1.0 ms each, measured), and checked
    with LIARS spare shares where there are that many (module docstring). mask_publics: as secret_from.
    When some holder's shares are wrong and one holder explains it (module docstring), its answer is
    left out, its id added to `left_out`, and the sum unmasked from the others'. When none does and
    decoded_liars finds the wrong shares, they are left out, their holders added to `left_out`. Else the
    owners wrong_dealers finds are added to `dealers` before UnmaskFailed is raised; where it finds none
    (the shares are ambiguous), Unexplained, whose reason says no one is named.
    check: why a sum cannot be the survivors' (shared_encoding.implausible; None under distributed
    DP): every sum is checked before anyone is named (ImplausibleSum, no one named), and the
    verdicts need withstand only LIARS - 1 liars (module docstring: the sum check)."""
    args = (cohort, threshold, alive, dropped, dropped_peers, round_id, field_bits, packing, workers, mask_publics)
    try:
        return _checked(_unmask_once(masked_sum, answers, *args), check)
    except WrongShares as exc:
        kept, culprits = _without_wrong(str(exc), answers, cohort, threshold, alive, dropped, packing, mask_publics,
                                        dealers, LIARS if check is None else LIARS - 1)
    try:
        total = _checked(_unmask_once(masked_sum, kept, *args), check)
    except WrongShares as exc:
        raise UnmaskFailed(f"{exc}, after leaving out {', '.join(sorted(culprits))}'s shares") from None
    if left_out is not None:
        left_out.update(culprits)
    return total


def _checked(total: np.ndarray, check) -> np.ndarray:
    why = None if check is None else check(total)
    if why is not None:
        raise ImplausibleSum(f"{why}; no one is named")
    return total


def _without_wrong(why: str, answers, cohort, threshold: int, alive, dropped, packing: int, mask_publics,
                   dealers: set[str] | None, liars: int) -> tuple[dict, set[str]]:
    """(the answers less the wrong shares, the holders that sent them): one holder's whole answer
    (wrong_holders), or the shares off their decoded polynomials (decoded_liars); else raises."""
    culprits = wrong_holders(answers, cohort, threshold, alive, dropped, packing, mask_publics, liars)
    if len(culprits) == 1:
        return {holder: revealed for holder, revealed in answers.items() if holder not in culprits}, culprits
    off = decoded_liars(answers, cohort, threshold, alive, dropped, packing, mask_publics, liars)
    if off:
        return {holder: {o: v for o, v in revealed.items() if o not in off.get(holder, ())}
                for holder, revealed in answers.items()}, set(off)
    named, more = set(), ""
    if dealers is not None:
        named = wrong_dealers(answers, cohort, threshold, alive, dropped, packing, mask_publics)
        dealers.update(named)
        more = (f", the shares {', '.join(sorted(named))} dealt do" if named else
                f", nor, past what {LIARS} lying holders could fake, a dealer's: no one is named")
    raise (UnmaskFailed if named else Unexplained)(
        f"{why}; no single holder's shares explain it, nor decoding the failing secrets{more}") from None


def wrong_holders(answers, cohort, threshold: int, alive, dropped, packing: int, mask_publics,
                  liars: int = LIARS) -> set[str]:
    """The holders each of whose leaving out makes every failing secret pass: none of them fails
    its checks any more, and at least one is verified (_verdict): the one holder whose shares are
    wrong (its answer, or what the owner dealt it), when one is and the surplus shares tell which
    (a set of more than one means they do not; empty: no failure, or none explains them all).
    Costs one reconstruction per secret, and one per suspect and failing secret: suspects are
    the holders that hold a share of every failing secret."""
    failing = _failing(answers, cohort, threshold, alive, dropped, packing, mask_publics)
    holder_at = {i + 1: d for i, d in enumerate(sorted(cohort))}
    if not failing:
        return set()
    suspects = set.intersection(*({holder_at[x] for x, _ in shares} for _, shares in failing.values()))
    culprits = set()
    for h in suspects:
        verdicts = {_verdict(threshold, kind, o, tuple((x, y) for x, y in shares if holder_at[x] != h), packing,
                             mask_publics, liars) for o, (kind, shares) in failing.items()}
        if "fails" not in verdicts and "verified" in verdicts:
            culprits.add(h)
    return culprits


def _failing(answers, cohort, threshold: int, alive, dropped, packing: int, mask_publics) -> dict[str, tuple]:
    """owner -> (kind, every share of it) for the secrets that do not rebuild from all their shares."""
    every = gather_shares(answers, cohort, threshold, alive, dropped, spare=len(cohort))
    return {o: (kind, shares) for o, (kind, shares) in every.items()
            if not _rebuilds(threshold, kind, o, shares, packing, mask_publics)}


MAX_DEALER_CHECKS = 16  # failing secrets decoded at most (0.1 s each at h = 224)


def wrong_dealers(answers, cohort, threshold: int, alive, dropped, packing: int, mask_publics) -> set[str]:
    """The owners of failing secrets whose own shares are at fault beyond what LIARS lying
    holders, or e = (h - t) // 2, could fake (module docstring: _at_fault). A holder that answers
    wrong fails every secret it holds a share of (about k), so when more fail than half the most
    owners one holder answered for (or than MAX_DEALER_CHECKS), lying holders are the likelier
    cause and no owner is named."""
    failing = _failing(answers, cohort, threshold, alive, dropped, packing, mask_publics)
    most = max((len(revealed) for revealed in answers.values()), default=0)
    if len(failing) > min(MAX_DEALER_CHECKS, most // 2):
        return set()
    return {owner for owner, (kind, shares) in failing.items()
            if _at_fault(threshold, kind, owner, shares, packing, mask_publics)}


MAX_DECODES = 32  # failing secrets decoded at most to find several wrong holders (0.1 s each at h = 224)


def decoded_liars(answers, cohort, threshold: int, alive, dropped, packing: int, mask_publics,
                  liars: int = LIARS) -> dict[str, set[str]]:
    """holder -> the owners whose share it answered off the owner's decoded polynomial, where
    every failing secret decodes (within e = (h - t) // 2) to one that can be trusted (module
    docstring): a mask key's gives the advertised key; else (a self seed, or no key to check)
    h - t + 1 - d > `liars`, d of the h shares off it. Empty where some failing secret does not,
    or more than MAX_DECODES fail."""
    failing = _failing(answers, cohort, threshold, alive, dropped, packing, mask_publics)
    if len(failing) > MAX_DECODES:
        return {}
    holder_at = {i + 1: d for i, d in enumerate(sorted(cohort))}
    off: dict[str, set[str]] = {}
    for owner, (kind, shares) in failing.items():
        found = _decode_seed(threshold, shares, packing)
        if found is None:
            return {}
        seed, d, wrong = found
        if kind == "mask" and mask_publics is not None:
            if keypair_from_seed(seed).public != mask_publics.get(owner):
                return {}
        elif len(shares) - threshold + 1 - d <= liars:
            return {}
        for x in wrong:
            off.setdefault(holder_at[x], set()).add(owner)
    return off


def _at_fault(threshold: int, kind: str, owner: str, shares, packing: int, mask_publics) -> bool:
    """Whether more than LIARS and more than e of the h answers must be lies were the owner
    honest: none of its shares' polynomials within e, or the one there gives a mask key it did
    not advertise and is h - t + 1 - d > LIARS answers from the advertised key's (module docstring)."""
    slack = len(shares) - threshold  # h - t
    committed = kind == "mask" and mask_publics is not None
    if slack < (LIARS if committed else 2 * LIARS):  # nothing this rule may tell apart: skip the decoding
        return False
    found = _decode_seed(threshold, shares, packing)
    if found is None:
        return slack // 2 >= LIARS
    seed, off, _ = found
    if not committed or keypair_from_seed(seed).public == mask_publics.get(owner):
        return False
    return slack + 1 - off > LIARS


def _decode_seed(threshold: int, shares, packing: int) -> tuple[bytes, int, set[int]] | None:
    """(the seed, d: how many shares are off its polynomial, the points of those off it) of the
    one polynomial of degree < t that all but (h - t) // 2 of the shares lie on, or None when
    there is none."""
    if packing == 1:
        halves = [decode([(x, y >> 64) for x, y in shares], threshold, shamir.PRIME),
                  decode([(x, y & (2**64 - 1)) for x, y in shares], threshold, shamir.PRIME)]
        if None in halves:
            return None
        s0, s1 = halves[0][0], halves[1][0]
        # d is the most off in one half: a polynomial pair other than P's differs from it in one
        # half at least, at h - t + 1 points or more, so that many less these are wrong answers
        misses = [{x for x, y in shares if shamir._evaluate(half, x, shamir.PRIME) != (y >> shift) & (2**64 - 1)}
                  for half, shift in zip(halves, (64, 0))]
    else:
        poly = decode(shares, threshold, shamir.PRIME)
        if poly is None:
            return None
        s0, s1 = poly[0], shamir._evaluate(poly, shamir.PRIME - 1, shamir.PRIME)
        misses = [{x for x, y in shares if shamir._evaluate(poly, x, shamir.PRIME) != y}]
    seed = s0.to_bytes(shamir.HALF_BYTES, "big") + s1.to_bytes(shamir.HALF_BYTES, "big")
    return seed, max(len(m) for m in misses), set().union(*misses)


def _verdict(threshold: int, kind: str, owner: str, shares, packing: int, mask_publics, liars: int) -> str:
    """"verified" when the shares give the owner's secret and something checks it (t + `liars`
    shares or more on one polynomial, or the advertised key of a mask secret); "unchecked" for
    fewer shares of a self-mask seed that lie on one polynomial: `liars` colluders can move it
    through every honest one there (no evidence: were it counted as such, they could have an
    honest holder named and a wrong seed used); else "fails"."""
    rebuilds = _rebuilds(threshold, kind, owner, shares, packing, mask_publics)
    if kind == "self" and len(shares) < threshold + liars:
        return "unchecked" if rebuilds else "fails"
    return "verified" if rebuilds else "fails"


def _rebuilds(threshold: int, kind: str, owner: str, shares, packing: int, mask_publics) -> bool:
    try:
        secret_from(threshold, kind, owner, shares, packing=packing, mask_publics=mask_publics)
    except UnmaskFailed:
        return False
    return True


def _unmask_once(masked_sum, answers, cohort, threshold, alive, dropped, dropped_peers, round_id, field_bits, packing,
                 workers, mask_publics) -> np.ndarray:
    gathered = gather_shares(answers, cohort, threshold, alive, dropped, spare=LIARS)
    seeds = {o: shares for o, (kind, shares) in gathered.items() if kind == "self"}
    keys = {o: shares for o, (kind, shares) in gathered.items() if kind == "mask"}
    return unmask(masked_sum, seeds, keys, dropped_peers, round_id, field_bits, workers,
                  resolve=functools.partial(_resolve, threshold, packing, mask_publics))


def _resolve(threshold: int, packing: int, mask_publics, kind: str, owner: str, shares) -> bytes:
    return secret_from(threshold, kind, owner, shares, packing=packing, mask_publics=mask_publics)
