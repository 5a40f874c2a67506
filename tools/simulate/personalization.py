"""Personalization modes: which model the fleet federates, and what a device's personalized
model is. Each mode is a transform of the base spec (the user's, or the default for the data):

    mode      layers (base -> fleet)          head    uploaded per update             personalized model
    adapters  as given (default: LoRA)        as given (default: dual)
                                                      LoRA adapters + global head     the device's private head
    head      every trainable layer frozen    dual    global head only                the device's private head
    finetune  lora/personal -> shared         global  every trainable parameter       a copy of the global head,
                                                                                      fine-tuned `finetune_steps`
                                                                                      on the device before each
                                                                                      evaluation
                                                                                      (DeviceRuntime.personalize)
    full      lora/personal -> shared         dual    full layers + global head       the device's private head
    none      as given                        global  LoRA adapters + global head     none: the global model

`head` still federates the global head (2,010 parameters, 8 KiB as fp32, for the default
model) rather than uploading nothing: that keeps a global model to report and to hand to new
devices, and a head mode that uploads nothing would be the local-only baseline again. `full`
is `adapters` with the whole layer shared instead of its low-rank adapter: the baseline for
"adapter uploads are N times smaller at equal personalized accuracy". `none` turns
personalization off (the heterogeneity benchmark's "personalization off").
"""

from __future__ import annotations

from fedge.models.spec import ModelSpec, remode

from .config import PERSONALIZATION

_TRAINABLE_TO_SHARED = {"lora": "shared", "personal": "shared"}
_TRAINABLE_TO_FROZEN = {"lora": "frozen", "shared": "frozen", "personal": "frozen"}


def personalized_spec(spec: ModelSpec, mode: str) -> ModelSpec:
    """The spec the fleet trains in `mode` (named `<base>-<mode>` unless mode is adapters)."""
    if mode not in PERSONALIZATION:
        raise ValueError(f"personalization {mode!r}: choose one of {PERSONALIZATION}")
    name = f"{spec.name}-{mode}"
    if mode == "adapters":
        return spec
    if mode == "head":
        return remode(spec, _TRAINABLE_TO_FROZEN, head="dual", name=name)
    if mode == "finetune":
        return remode(spec, _TRAINABLE_TO_SHARED, head="global", name=name)
    if mode == "full":
        return remode(spec, _TRAINABLE_TO_SHARED, head="dual", name=name)
    return remode(spec, head="global", name=name)
