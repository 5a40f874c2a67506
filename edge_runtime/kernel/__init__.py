"""The shared kernel: everything the device and the coordinator (and `models/`) both use.

    protocol, codec          wire messages (frozen dataclasses) and message <-> bytes
    update_codec, compress   update frames; clip, quantize, sparsify, error feedback
    round_model              a round's model split into retained parts and joined again
    manifest, artifact_layout, backends, ort_loader   artifact files, their layout, which trainers exist
    errors                   the one error tree (FedgeError) every package hangs its errors under
    configfile               TOML -> frozen dataclass loader
    clock                    the Clock protocol and its two implementations
    files                    atomic writes and thread-safe .npz loads
    features                 examples as float32 for every reader (uint8 pixels as x / 255)
    transport/               the pubsub interface, the in-memory broker, the MQTT adapter
    secagg/                  secure aggregation's pure pieces: keys, shares, masks, shared quantization

The coordinator and `models/` import this subpackage and nothing else of the device runtime
(tests/test_import_rules.py checks it). Nothing here imports the rest of the device runtime.
"""
