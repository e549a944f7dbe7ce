"""Model names → classes (``--model NAME``). Imports are lazy: loading one model never imports
the others' dependencies."""

from __future__ import annotations

import importlib

from realtime_erc.errors import UserError
from realtime_erc.models.base import ERCModel

MODELS: dict[str, str] = {
    "bigfusion": "realtime_erc.models.bigfusion:BigFusion",
    "hotspot": "realtime_erc.models.hotspot:EmotionHotspots",
    "dfgcn": "realtime_erc.models.dfgcn:DFGCN",
    "utterance-mlp": "realtime_erc.models.baselines:UtteranceMLP",
    "dialoguegcn": "realtime_erc.models.baselines:DialogueGCN",
    "dialogue-rnn-lite": "realtime_erc.models.baselines:DialogueRNNLite",
}


class UnknownModelError(UserError, ValueError):
    pass


def model_class(name: str) -> type[ERCModel]:
    try:
        module, cls = MODELS[name].split(":")
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}: choose one of {', '.join(MODELS)}"
        ) from None
    return getattr(importlib.import_module(module), cls)
