"""The contract between training and live inference: what features a model was trained on.

A checkpoint stores one :class:`FeatureSpec`; the live stages are built from it (the text
encoder and adapter, the heads' scores appended or not, the modalities passed as present) and a
live configuration that would feed the model other features is refused at start, naming the key
to change. The extractor identities are the strings the training corpus recorded, e.g.
``all-mpnet-base-v2-pooled-t128+lora-meld@9b69a17efc51``; None where it recorded none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from realtime_erc.events import MODALITIES
from realtime_erc.models.base import FeatureDimError, FeatureDims

Modality = Literal["text", "audio", "visual"]
ABSENT = "absent"


class FeatureSpecError(FeatureDimError):
    """A live configuration the model's features do not fit, or an unreadable spec."""


class FeatureSpec(BaseModel):
    """What a model was trained on; built by the trainer, stored in the checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    modalities: tuple[Modality, ...] = Field(
        MODALITIES, description="Modalities present in training; the others are passed absent."
    )
    dims: FeatureDims
    sequences: bool = Field(True, description="Per-frame sequences fed besides the vectors.")
    text: str | None = Field(None, description="Text encoder identity (base + adapter).")
    audio: str | None = Field(None, description="Audio extractor identity (+ speech head's).")
    visual: str | None = Field(None, description="Visual extractor identity (+ face head's).")
    heads: Literal["none", "scores"] = Field(
        "none", description="scores: the heads' log-probabilities appended to audio/visual."
    )

    @property
    def text_encoder(self) -> str | None:
        """The base encoder's identity (``all-mpnet-base-v2-pooled-t128``); None = not known."""
        return None if self.text is None else self.text.split("+", 1)[0]

    @property
    def text_adapter(self) -> str | None:
        """The adapter's identity (``lora-meld@9b69a17efc51``); None = the base encoder."""
        if self.text is None or "+" not in self.text:
            return None
        return self.text.split("+", 1)[1]

    @classmethod
    def from_training(
        cls,
        extractor: Mapping[str, str],
        dims: FeatureDims,
        modalities: tuple[str, ...],
        sequences: bool = True,
    ) -> FeatureSpec:
        """From a training corpus's extractor identities (``CorpusFeatures.extractor``)."""
        return cls.model_validate(
            {
                "modalities": modalities,
                "dims": dims,
                "sequences": sequences,
                **{
                    name: None if extractor.get(name, ABSENT) == ABSENT else extractor[name]
                    for name in MODALITIES
                },
                "heads": extractor.get("heads", "none"),
            }
        )

    @classmethod
    def from_checkpoint(cls, payload: Mapping[str, Any], source: str) -> FeatureSpec:
        """The spec a checkpoint stores; checkpoints written before it existed carry the same
        facts in their provenance, read here once."""
        try:
            if "feature_spec" in payload:
                return cls.model_validate(payload["feature_spec"])
            provenance = payload.get("provenance") or {}
            return cls.from_training(
                provenance.get("features") or {},
                FeatureDims.from_dict(payload["feature_dims"]),
                tuple(provenance.get("modalities", MODALITIES)),
                bool(provenance.get("sequences", True)),
            )
        except ValidationError as e:
            first = e.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise FeatureSpecError(
                f"{source}: its feature spec is invalid at {key}: {first['msg']}: re-save the "
                "checkpoint with this version of realtime-erc"
            ) from None

    def check_live(self, features: Any, live_dims: FeatureDims, model_id: str) -> None:
        """Refuse at start, not at the first utterance, a live feature configuration
        (``FeaturesConfig``) whose vectors (``live_dims``) the model cannot take, naming the key
        to change."""
        for name in self.modalities:
            want, got = self.dims.pooled(name), live_dims.pooled(name)
            if want != got:
                raise FeatureSpecError(
                    f"the model {model_id} takes {name} vectors of {want} values, the "
                    f"configured features give {got}: use the features it was trained with "
                    f'(features.{name}, and features.heads = "auto" to follow the checkpoint) '
                    "or another model.checkpoint"
                )
        if features.heads not in ("auto", self.heads):
            raise FeatureSpecError(
                f"features.heads = {features.heads!r}, but the model {model_id} was trained "
                f'with heads = {self.heads!r}: set features.heads = "auto"'
            )
