"""The live chain's feature work with the real extractors: the analysis stage takes frames as
they come and analyses each segment; the assembler joins it with the transcript into one
UtteranceFeatures."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from feature_media import espeak, face_frame, fer_faces

from realtime_erc.assemble import UtteranceAssembler
from realtime_erc.config import FeaturesConfig
from realtime_erc.events import (
    SegmentAnalysis,
    SpeechSegment,
    Utterance,
    UtteranceFeatures,
    VideoFrame,
)
from realtime_erc.features.analysis import AnalysisStage
from realtime_erc.features.dims import feature_dims
from realtime_erc.features.text import TextEncoder
from realtime_erc.models.base import FeatureDimError, FeatureDims

pytestmark = pytest.mark.slow

TEXT = "The meeting was moved to Friday afternoon."


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return espeak(TEXT)


def utterance(samples: np.ndarray, start: float, text: str = TEXT) -> Utterance:
    end = start + len(samples) / 16000
    seg = SpeechSegment(7, start, end, samples, 0.0, 0.0, audio_start=start)
    return Utterance(7, seg, text, speaker="S1")


def run_chain(config: FeaturesConfig, events: list, stage: AnalysisStage | None = None) -> list:
    """``events`` (frames, then utterances) through the analysis stage (each utterance's segment
    first) and the assembler, as the live chain passes them: what comes out of both."""
    stage = stage or AnalysisStage(config)
    text = TextEncoder(config.text) if config.text.enabled else None
    assembler = UtteranceAssembler(feature_dims(config), text)

    async def go() -> list:
        await stage.start()
        await assembler.start()
        out = []
        try:
            for event in events:
                if isinstance(event, Utterance):
                    for analysis in [e async for e in stage.process(event.segment)]:
                        out += [e async for e in assembler.process(analysis)]
                    out += [e async for e in assembler.process(event)]
                else:
                    out += [e async for e in stage.process(event)]
        finally:
            await stage.close()
        return out

    return asyncio.run(go())


def config(**visual) -> FeaturesConfig:
    # upscaled 48 px faces are blurry
    return FeaturesConfig().with_values(
        {"visual.min_confidence": 0.3, **{f"visual.{k}": v for k, v in visual.items()}}
    )


def test_an_utterance_with_a_face_gives_all_three_modalities(speech) -> None:
    face = face_frame(fer_faces([3])[0])
    blank = face_frame(None)
    # 1 s before the utterance (no face), then the utterance's frames (a face) at 15 fps
    frames = [VideoFrame(blank, i, i / 15) for i in range(15)]
    dur = len(speech) / 16000
    frames += [VideoFrame(face, 15 + i, 1.0 + i / 15) for i in range(int(dur * 15))]
    stage = AnalysisStage(config())
    analysis, feats = run_chain(stage.config, [*frames, utterance(speech, 1.0)], stage)

    # frames stop at the analysis; its result goes on (for the provisional event), then the
    # joined features
    assert isinstance(analysis, SegmentAnalysis) and isinstance(feats, UtteranceFeatures)
    assert feats.analysis is analysis
    assert feats.utterance is not None and feats.utterance.text == TEXT
    assert feats.speaker == "S1" and feats.present == (True, True, True)
    assert (feats.start, feats.utterance_id) == (1.0, 7)
    dims = feature_dims(stage.config)
    dims.check(feats)  # the shapes a model trained on this configuration accepts
    assert dims == FeatureDims()  # the defaults describe the default extractors
    assert feats.visual.mask.all()  # only the utterance's frames (all with the face)
    n_visual = feats.visual.sequence.shape[0]
    assert abs(n_visual - dur * 5) <= 1  # analysed at max_fps = 5
    assert stage.stats.frames_seen == len(frames) and stage.stats.frames_analysed >= 5
    assert stage.stats.frames_skipped > stage.stats.frames_analysed
    for m in (feats.text, feats.audio, feats.visual):
        assert np.isfinite(m.pooled).all() and np.isfinite(m.sequence).all()


def test_missing_inputs_and_disabled_modalities_are_absent(speech) -> None:
    cfg = config().with_values({"text.enabled": True})
    out = run_chain(cfg, [utterance(speech, 0.0, text="")])
    assert out[-1].present == (False, True, False)  # no transcript, no frames

    cfg = config(enabled=False).with_values({"audio.enabled": False})
    blank = [VideoFrame(face_frame(None), i, i / 15) for i in range(10)]
    out = run_chain(cfg, [*blank, utterance(speech, 0.0)])
    assert out[-1].present == (True, False, False)
    assert out[-1].audio.pooled.shape == (88,) and out[-1].visual.pooled.shape == (64,)


def test_no_face_in_view_marks_visual_absent(speech) -> None:
    blank = [VideoFrame(face_frame(None), i, i / 15) for i in range(30)]
    out = run_chain(config(), [*blank, utterance(speech, 0.0)])
    assert out[-1].present == (True, True, False)


def test_librosa_features_are_refused_by_a_model_expecting_egemaps(speech) -> None:
    cfg = config(enabled=False).with_values({"audio.backend": "librosa"})
    out = run_chain(cfg, [utterance(speech, 0.0)])
    dims = feature_dims(cfg)
    assert (dims.audio, dims.audio_seq) == (75, 25)
    dims.check(out[-1])
    with pytest.raises(FeatureDimError, match=r"audio features have shape \(75,\)"):
        FeatureDims().check(out[-1])


def test_extractors_take_their_config_sections() -> None:
    cfg = config(num_faces=20, speaker_face="largest").with_values({"audio.backend": "librosa"})
    stage = AnalysisStage(cfg)
    assert stage.visual.options is cfg.visual and stage.visual.running_mode == "video"
    assert stage.audio.options is cfg.audio and stage.audio.dim == 75
    text = TextEncoder(cfg.text)
    assert text.options is cfg.text and text.spec.name == "all-MiniLM-L6-v2"
    options = stage.visual.options
    assert (options.num_faces, options.speaker_face, options.min_confidence) == (
        20,
        "largest",
        0.3,
    )
