"""Secure aggregation (Bonawitz et al. 2017, with the sparse neighbour graph of SecAgg+,
Bell et al. 2020): the pieces that device and coordinator both use. No clock; randomness is
passed in (a numpy Generator for the quantizer's rounding, `os.urandom`-backed key generation
from `cryptography` for secrets); only identity_files touches the disk.

    shamir           t-of-k sharing of 16-byte seeds over the prime field 2^64 - 59, plain or packed
    keys             X25519 key pairs (the mask pair from a seed), HKDF pair seeds, AEAD for shares
    prg              a seed expanded into a mask vector mod 2^m (AES-CTR)
    graph            the round's k-regular neighbour graph, and k and t for a security parameter
    quantize         shared, round-fixed quantization: seeded rotation, shared L-inf scale, offset
    subset           the round's shared random-k coordinates
    shared_encoding  one device's update on that grid (with error feedback); the mean back
    packing          field elements bit-packed to m bits on the wire
    masking          a device's masked input; the coordinator's unmasking of the survivors' sum
    session          one device's round: keys, shares, mask, reveal, and its named declines
    recovery         the coordinator's reconstruction of the secrets from the unmask answers
    identity         Ed25519-signed key advertisements; identity_files: keys and directory on disk
    messages         the wire messages (type codes 15-22)

The coordinator learns only the sum of the survivors' quantized vectors (mod 2^m, with
m = b + ceil(log2 n) so the sum never wraps).
"""
