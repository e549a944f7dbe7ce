"""The emotion heads' scores as ERC features (``features.heads``)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from feature_media import espeak, face_frame, fer_faces

from realtime_erc.config import FeaturesConfig
from realtime_erc.events import ModalityFeatures, SegmentAnalysis, SpeechSegment, VideoFrame
from realtime_erc.features.dims import feature_dims
from realtime_erc.features.head_scores import (
    HEAD_CLASSES,
    MIN_PROB,
    log_scores,
    resolve_heads,
    with_scores,
)


def test_auto_follows_the_checkpoint_and_explicit_settings_stand():
    assert resolve_heads("auto", "scores") == "scores"
    assert resolve_heads("auto", None) == "none"  # checkpoints from before the option
    assert resolve_heads("auto", "none") == "none"
    assert resolve_heads("none", "scores") == "none"
    assert resolve_heads("scores", None) == "scores"


def test_scores_are_clipped_log_probabilities_and_missing_ones_uniform():
    p = np.array([0.7, 0.3, 0.0])
    assert np.allclose(log_scores(p, 3), np.log([0.7, 0.3, MIN_PROB]))
    assert np.allclose(log_scores(None, 4), np.log(0.25))
    with pytest.raises(ValueError, match="expected 8 head scores"):
        log_scores(np.ones(7) / 7, 8)


def test_scores_are_appended_to_present_modalities_only():
    present = ModalityFeatures(np.ones(5, np.float32), np.ones((2, 3), np.float32))
    out = with_scores(present, np.array([0.5, 0.5]), 2)
    assert out.pooled.shape == (7,) and out.present
    assert np.allclose(out.pooled[5:], np.log(0.5)) and out.sequence is present.sequence
    absent = with_scores(ModalityFeatures.absent(5), np.array([0.5, 0.5]), 2)
    assert not absent.present and not absent.pooled.any() and absent.pooled.shape == (7,)


def test_dims_grow_by_each_heads_classes():
    base = feature_dims(FeaturesConfig(heads="none"))
    assert feature_dims(FeaturesConfig()) == base  # auto without a checkpoint: none
    scored = feature_dims(FeaturesConfig(heads="scores"))
    assert scored.audio == base.audio + HEAD_CLASSES["audio"] == base.audio + 8
    assert scored.visual == base.visual + HEAD_CLASSES["visual"] == base.visual + 7
    assert (scored.text, scored.audio_seq, scored.visual_seq) == (
        base.text,
        base.audio_seq,
        base.visual_seq,
    )


@pytest.mark.slow
def test_the_analysis_stage_appends_the_real_heads_scores():
    from realtime_erc.features.analysis import AnalysisStage
    from realtime_erc.features.face_expression import FaceExpressionHead
    from realtime_erc.features.speech_emotion import SpeechEmotionHead

    speech = espeak("I can't believe you did that to me again!")
    # upscaled 48 px faces are blurry
    cfg = FeaturesConfig(heads="scores").with_values({"visual.min_confidence": 0.3})
    stage = AnalysisStage(
        cfg, speech_head=SpeechEmotionHead.load(), face_head=FaceExpressionHead.load()
    )
    face = face_frame(fer_faces([3])[0])
    dur = len(speech) / 16000
    frames = [VideoFrame(face, i, i / 15) for i in range(int(dur * 15))]
    seg = SpeechSegment(0, 0.0, dur, speech, 0.0, 0.0, audio_start=0.0)

    async def go():
        await stage.start()
        try:
            out = []
            for event in [*frames, seg]:
                out += [e async for e in stage.process(event)]
            return out
        finally:
            await stage.close()

    analysis = asyncio.run(go())[-1]
    assert isinstance(analysis, SegmentAnalysis)
    dims = feature_dims(cfg)
    assert analysis.audio.present and analysis.visual.present
    assert analysis.audio.pooled.shape == (dims.audio,)
    assert analysis.visual.pooled.shape == (dims.visual,)
    for modality, features in (("audio", analysis.audio), ("visual", analysis.visual)):
        probs = np.array(list(analysis.head_scores[modality].values()))
        n = HEAD_CLASSES[modality]
        assert np.allclose(features.pooled[-n:], np.log(np.clip(probs, MIN_PROB, 1)), atol=1e-5)
        assert np.isfinite(features.pooled).all()


def _heads_checkpoint(tmp_path):
    """An (untrained) model saved as if trained on the heads' scores."""
    from realtime_erc.models.checkpoint import build_model, save_checkpoint
    from realtime_erc.training.assembled import MELD7

    dims = feature_dims(FeaturesConfig(heads="scores"))
    path = tmp_path / "heads.pt"
    model = build_model("utterance-mlp", dims, MELD7, "meld7")
    save_checkpoint(model, path, provenance={"features": {"heads": "scores"}})
    return path


def test_a_checkpoint_trained_on_head_scores_gets_them_live(tmp_path):
    from realtime_erc.config import load_config
    from realtime_erc.features.analysis import AnalysisStage
    from realtime_erc.models.base import FeatureDimError
    from realtime_erc.pipeline import find_stage
    from realtime_erc.session import build_stages

    path = _heads_checkpoint(tmp_path)
    off = ["output.zmq.enabled=false", "output.mqtt.enabled=false", "speakers.enabled=false"]
    config = load_config(overrides=[f"model.checkpoint={path}", "model.provisional=false", *off])
    analysis = find_stage(build_stages(config, "t"), AnalysisStage)
    assert analysis.config.heads == "scores"  # auto follows the checkpoint
    assert analysis.speech_head is not None and analysis.face_head is not None  # even so
    assert config.features.heads == "auto"  # the user's config is left as it was

    config = load_config(overrides=[f"model.checkpoint={path}", "features.heads=none", *off])
    with pytest.raises(FeatureDimError, match=r"takes audio vectors of 96 values.*give 88"):
        build_stages(config, "t")
