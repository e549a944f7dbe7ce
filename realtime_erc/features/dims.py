"""The feature dims the configured extractors produce: what a model must accept."""

from __future__ import annotations


def feature_dims(config, text_dim: int | None = None):  # FeaturesConfig -> FeatureDims
    """The :class:`FeatureDims` the configured extractors produce (what a model must accept);
    ``config.heads`` must be resolved (``none`` or ``scores``; ``auto`` counts as ``none``).
    ``text_dim``: the text encoder's width where an adapter chose it (default: the configured
    ``features.text.encoder``'s)."""
    from realtime_erc.features.audio import AUDIO_DIMS
    from realtime_erc.features.text import encoder_spec, resolve_encoder
    from realtime_erc.features.visual import VISUAL_DIM
    from realtime_erc.models.base import FeatureDims

    audio, audio_seq = AUDIO_DIMS[config.audio.backend]
    visual = VISUAL_DIM
    if config.heads == "scores":
        from realtime_erc.features.head_scores import HEAD_CLASSES

        audio += HEAD_CLASSES["audio"]
        visual += HEAD_CLASSES["visual"]
    text = text_dim or encoder_spec(resolve_encoder(config.text.encoder)).dim
    return FeatureDims(
        text=text,
        audio=audio,
        visual=visual,
        text_seq=text,
        audio_seq=audio_seq,
        visual_seq=VISUAL_DIM,
    )
