"""One utterance's failure (ASR, a feature extractor, the model) becomes an ``errors`` entry on
its event and the session goes on; the overload policy sheds work in its documented order."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from feature_media import espeak

from realtime_erc.assemble import UtteranceAssembler
from realtime_erc.config import Config, FeaturesConfig
from realtime_erc.emit import EventStage
from realtime_erc.events import (
    Fault,
    SegmentAnalysis,
    SpeechSegment,
    StatusEvent,
    Utterance,
    VideoFrame,
    now,
)
from realtime_erc.features.analysis import AnalysisStage
from realtime_erc.features.audio import AudioFeatures, AudioOptions
from realtime_erc.features.dims import feature_dims
from realtime_erc.inference import InferenceStage, project_scores
from realtime_erc.load import LoadMonitor, LoadPolicy
from realtime_erc.models.checkpoint import build_model
from realtime_erc.outputs.schema import validate_document
from realtime_erc.pipeline import Outbox
from realtime_erc.speech.asr import AsrStage

MELD7 = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")


def segment(i: int, samples: np.ndarray, closed_ago_s: float = 0.0) -> SpeechSegment:
    t = now() - closed_ago_s
    start = 2.0 * i
    return SpeechSegment(i, start, start + len(samples) / 16000, samples, t - 0.1, t)


async def collect(stage, events: list) -> list:
    """What ``stage`` yields and sends through its outbox for ``events``, then at flush."""
    sent: asyncio.Queue = asyncio.Queue()
    stage.bind(Outbox(sent))
    out = []
    for event in events:
        out += [e async for e in stage.process(event)]
    out += [e async for e in stage.flush()]
    return out + [sent.get_nowait() for _ in range(sent.qsize())]


async def through(stages: list, events: list) -> list:
    """``events`` through a chain of stages, each one's output the next one's input."""
    for stage in stages:
        events = await collect(stage, events)
    return events


def chain(engine, fusion=None) -> list:
    """The live chain after the two branches: assembler → inference → events."""
    return [
        UtteranceAssembler(engine.model.dims, None, modalities=("text", "audio", "visual")),
        InferenceStage("s", engine, fusion),
        EventStage("s", "meld7", engine.labels, engine.model_id),
    ]


# ----------------------------------------------------------------------------- the policy


def test_load_levels_rise_in_order_and_fall_with_hysteresis():
    load = LoadMonitor(LoadPolicy(shed_thresholds_s=(1.0, 2.0, 4.0, 8.0)))
    load.observe(0.5)
    assert load.level == 0 and not load.sheds("provisional")
    load.observe(2.5)
    assert load.shedding == ("provisional", "video") and load.take_change().level == 2
    assert load.take_change() is None  # reported once
    load.observe(1.5)  # below 2.0 but not below 1.0: hysteresis keeps level 2
    assert load.level == 2
    load.observe(0.9)
    assert load.level == 1 and load.sheds("provisional") and not load.sheds("video")
    load.observe(9.0)
    assert load.shed("transcription") and load.shed_counts["transcription"] == 1
    load.observe(0.1)
    assert load.level == 0 and load.max_level == 4


def test_the_most_lagging_stage_sets_the_level():
    load = LoadMonitor(LoadPolicy(shed_thresholds_s=(1.0, 2.0, 4.0, 8.0)))
    load.observe(5.0, "asr")
    load.observe(0.0, "analysis")  # a fast stage does not mask the slow one
    assert load.level == 3 and load.lag_s == 5.0
    load.observe(0.2, "asr")  # the slow stage caught up
    assert load.level == 0


def test_a_disabled_policy_never_sheds():
    load = LoadMonitor(LoadPolicy(shedding=False))
    load.observe(60.0)
    assert load.level == 0 and not load.sheds("transcription")


def test_status_documents_carry_the_load_report():
    load = LoadMonitor(LoadPolicy(shed_thresholds_s=(1.0, 2.0, 4.0, 8.0)))
    load.observe(3.0)
    doc = StatusEvent("s", "online", None, "meld7", "2026-11-22T10:00:00.000Z",
                      load.report()).to_document()  # fmt: skip
    validate_document(doc)
    assert doc["load"]["level"] == 2 and doc["load"]["shedding"] == ["provisional", "video"]


def test_head_scores_map_onto_the_label_set_by_emotion_name():
    ravdess = {"neutral": 0.1, "calm": 0.1, "happy": 0.6, "sad": 0.1, "angry": 0.05,
               "fearful": 0.05, "disgust": 0.0, "surprised": 0.0}  # fmt: skip
    fer = {"angry": 0.0, "disgust": 0.0, "fear": 0.0, "happy": 1.0, "sad": 0.0,
           "surprise": 0.0, "neutral": 0.0}  # fmt: skip
    scores = project_scores({"audio": ravdess, "visual": fer}, MELD7)
    assert abs(sum(scores.values()) - 1) < 1e-5
    assert scores["joy"] == pytest.approx((0.6 + 1.0) / 2)
    assert scores["neutral"] == pytest.approx(0.2 / 2)  # calm folds into neutral
    assert project_scores({"audio": {"bored": 1.0}}, MELD7) is None


# ----------------------------------------------------------------------------- ASR


class FlakyTranscriber:
    """Raises on the second segment, transcribes the others to a fixed text."""

    def __init__(self):
        self.calls = 0

    def transcribe(self, samples, offset=0.0):
        from realtime_erc.speech.asr import TranscriptResult

        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("decoder crashed")
        return TranscriptResult("hello there", (), "en", len(samples) / 16000, 0.01)


def test_an_asr_failure_gives_an_empty_utterance_with_its_error():
    stage = AsrStage(transcriber=FlakyTranscriber(), keep_empty=True)
    audio = np.zeros(16000, np.float32)
    out = asyncio.run(collect(stage, [segment(i, audio) for i in range(3)]))
    utterances = sorted(out, key=lambda u: u.utterance_id)
    assert [u.utterance_id for u in utterances] == [0, 1, 2]
    assert [u.text for u in utterances] == ["hello there", "", "hello there"]
    assert utterances[1].faults == (Fault("asr", "RuntimeError: decoder crashed"),)
    assert stage.failures == 1


def test_a_late_segment_is_not_transcribed_under_overload():
    load = LoadMonitor(LoadPolicy(shed_thresholds_s=(0.1, 0.2, 0.3, 0.4)))
    stage = AsrStage(transcriber=FlakyTranscriber(), keep_empty=True, load=load)
    audio = np.zeros(16000, np.float32)
    [late] = asyncio.run(collect(stage, [segment(0, audio, closed_ago_s=5.0)]))
    assert (
        late.text == "" and late.faults[0].stage == "asr" and "overload" in late.faults[0].message
    )
    assert load.shed_counts["transcription"] == 1


# ----------------------------------------------------------------------------- features


class BrokenAudio(AudioFeatures):
    def extract(self, samples):
        raise ValueError("openSMILE exploded")


@pytest.mark.slow
def test_an_audio_failure_marks_audio_absent_and_keeps_the_rest():
    speech = espeak("I can hardly believe it happened again.")
    cfg = FeaturesConfig().with_values({"visual.enabled": False})
    stage = AnalysisStage(cfg, audio=BrokenAudio(AudioOptions()))

    async def go():
        await stage.start()
        try:
            return await collect(stage, [segment(0, speech)])
        finally:
            await stage.close()

    [analysis] = asyncio.run(go())  # the segment itself goes to the transcription branch
    assert isinstance(analysis, SegmentAnalysis)
    assert not analysis.audio.present
    assert analysis.faults == (Fault("audio", "ValueError: openSMILE exploded"),)


def test_video_frames_are_shed_before_features():
    cfg = FeaturesConfig()
    load = LoadMonitor(LoadPolicy(shed_thresholds_s=(0.1, 0.2, 0.3, 0.4)))
    load.observe(0.25)  # level 2: provisional and video shed
    stage = AnalysisStage(cfg, load=load)
    frame = VideoFrame(np.zeros((48, 48, 3), np.uint8), 0, 0.0)
    assert asyncio.run(collect(stage, [frame])) == []
    assert load.shed_counts == {"video": 1} and stage.stats.frames_seen == 0


# ----------------------------------------------------------------------------- the model


def engine_for_test(fail_on: int | None = None):
    from realtime_erc.engine import Engine

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_model("utterance-mlp", feature_dims(Config().features), MELD7, "meld7")
    engine = Engine(model, "cpu")
    if fail_on is not None:
        step_many = engine.step_many

        def flaky(items):
            if any(u.utterance_id == fail_on for _, u in items):
                raise RuntimeError("CUDA out of memory")
            return step_many(items)

        engine.step_many = flaky
    return engine


def analysis_for(seg: SpeechSegment) -> SegmentAnalysis:
    from realtime_erc.events import ModalityFeatures

    dims = feature_dims(Config().features)
    audio = ModalityFeatures(np.ones(dims.audio, np.float32))
    heads = {"audio": {"happy": 0.7, "sad": 0.3}}
    return SegmentAnalysis(seg, "S1", audio, ModalityFeatures.absent(dims.visual), heads)


def test_provisional_then_final_with_the_model_and_a_model_failure_is_reported():
    stages = chain(engine_for_test(fail_on=1))
    audio = np.zeros(16000, np.float32)
    segs = [segment(i, audio) for i in range(3)]
    events = []
    for seg in segs:
        events += [analysis_for(seg), Utterance(seg.segment_id, seg, "")]
    out = asyncio.run(through(stages, events))
    docs = [e.to_document() for e in out]
    for doc in docs:
        validate_document(doc)
    assert [(d["utterance_id"], d["provisional"]) for d in docs] == [
        (0, True), (0, False), (1, True), (1, False), (2, True), (2, False)]  # fmt: skip
    assert docs[0]["label"] == "joy" and docs[0]["modalities"]["audio"]
    assert docs[0]["model"] == "emotion-heads/audio"  # the heads, not the ERC model, said it
    assert docs[1]["model"].startswith("utterance-mlp/meld7@")
    assert docs[1]["label"] in MELD7 and docs[1]["speaker"] == "S1"
    assert docs[3]["label"] is None and docs[3]["errors"][0]["stage"] == "model"
    assert "errors" not in docs[5] and docs[5]["label"] in MELD7


def test_a_transcript_faster_than_its_analysis_waits_for_it():
    seg = segment(0, np.zeros(16000, np.float32))
    out = asyncio.run(through(chain(engine_for_test()), [Utterance(0, seg, ""), analysis_for(seg)]))
    assert [(e.utterance_id, e.provisional, e.speaker) for e in out] == [(0, False, "S1")]


def test_heads_ride_on_both_events_and_a_fitted_fusion_moves_the_final():
    from realtime_erc.fusion import FusionParams

    seg = segment(0, np.zeros(16000, np.float32))
    events = [analysis_for(seg), Utterance(0, seg, "")]
    plain = asyncio.run(through(chain(engine_for_test()), events))
    heads = {"audio": {label: 0.0 for label in MELD7} | {"joy": 0.7, "sadness": 0.3}}
    assert [e.heads for e in plain] == [heads, heads]
    assert plain[1].to_document()["heads"] == heads
    engine = engine_for_test()
    fusion = FusionParams(model=engine.model_id, weights={"audio": 4.0})
    fused = asyncio.run(through(chain(engine, fusion), events))
    assert fused[1].label == "joy" and fused[1].scores["joy"] > 0.9
    validate_document(fused[1].to_document())
