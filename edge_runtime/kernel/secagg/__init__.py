"""Secure aggregation (Bonawitz et al. 2017, with the sparse neighbour graph of SecAgg+,
Bell et al. 2020): the pure pieces that device and coordinator both use. No I/O, no clock;
randomness is passed in (a numpy Generator for the quantizer's rounding, `os.urandom`-backed
key generation from `cryptography` for secrets).

    shamir      t-of-k secret sharing over the prime field 2^256 + 297
    keys        X25519 key pairs, HKDF pair seeds, AEAD for shares relayed by the coordinator
    prg         a seed expanded into a mask vector mod 2^m (AES-256-CTR)
    graph       the round's k-regular neighbour graph, and k and t for a security parameter
    quantize    shared, round-fixed quantization: seeded rotation, shared L-inf scale, offset
    packing     field elements bit-packed to m bits on the wire
    masking     a device's masked input; the coordinator's unmasking of the survivors' sum

The coordinator learns only the sum of the survivors' quantized vectors (mod 2^m, with
m = b + ceil(log2 n) so the sum never wraps).
"""
