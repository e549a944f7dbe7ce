"""Assemble a session's pipeline from the configuration and run it until it ends or is stopped.

The same stages serve live capture and replay; only the source differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path

from realtime_erc.config import Config, parse_speed
from realtime_erc.emit import EmitStage
from realtime_erc.events import MODALITIES, Event
from realtime_erc.outputs.jsonl import JsonlWriter
from realtime_erc.outputs.publisher import Publisher, PublishStage
from realtime_erc.outputs.zmq import ZmqPublisher
from realtime_erc.pipeline import Pipeline, PipelineStats, Stage
from realtime_erc.sources.recording import ReplaySource, read_recording
from realtime_erc.speech.asr import AsrStage
from realtime_erc.speech.segmenter import Segmenter

log = logging.getLogger(__name__)


@dataclass
class SessionPlan:
    """What a session will run: its id, source and stages (built, not yet started)."""

    session_id: str
    source: AsyncIterable[Event]
    source_name: str
    stages: list[Stage]


def build_publishers(
    config: Config,
    extra: list[Publisher] | None = None,
    session_id: str = "",
    label_set: str = "",
    model: str | None = None,
) -> list[Publisher]:
    """The configured outputs. ``session_id``/``label_set``/``model`` go into MQTT's last will."""
    publishers: list[Publisher] = []
    if config.output.zmq.enabled:
        publishers.append(
            ZmqPublisher(
                config.output.zmq.endpoint,
                wait_for_subscriber_s=config.output.zmq.wait_for_subscriber_s,
            )
        )
    if config.output.jsonl.path:
        publishers.append(JsonlWriter(Path(config.output.jsonl.path)))
    if config.output.mqtt.enabled:
        from realtime_erc.outputs.mqtt import MqttPublisher

        publishers.append(
            MqttPublisher(
                config.output.mqtt,
                session_id=session_id or config.session.id or "unknown",
                label_set=label_set or config.session.label_set,
                model=model,
                topic_prefix=config.output.topic_prefix,
            )
        )
    return publishers + list(extra or [])


def load_engine(config: Config):  # -> Engine | None
    """The configured emotion model on its device, or None for ``model.checkpoint = "none"``.
    ``model.checkpoint`` is a packaged model's name (``realtime-erc models``) or a file path."""
    from realtime_erc.models.presets import preset_names, resolve_checkpoint

    name = config.model.checkpoint
    path = resolve_checkpoint(name)
    if path is None:
        return None
    if not path.is_file():
        from realtime_erc.models.checkpoint import CheckpointError

        fix = (
            "reinstall the package"
            if name in preset_names()
            else "train one with `realtime-erc train`, or set model.checkpoint=default"
        )
        raise CheckpointError(f"model checkpoint {path} does not exist: {fix}")
    from realtime_erc.engine import Engine

    return Engine(path, config.model.device)


def build_stages(
    config: Config,
    session_id: str,
    extra_publishers: list[Publisher] | None = None,
    *,
    paced: bool = True,
) -> list[Stage]:
    """The processing chain shared by live capture and replay:

    segmenter → analysis (speaker, audio/visual features, emotion heads) → ASR → emit
    (provisional and final events, the conversation model) → publish.

    ``paced``: the source runs at (a multiple of) real time. An unpaced replay (``--speed max``)
    is always "behind" by design, so the overload policy is off for it: every utterance gets
    the full treatment.
    """
    from realtime_erc.features.analysis import AnalysisStage
    from realtime_erc.features.head_scores import resolve_heads
    from realtime_erc.features.stage import feature_dims
    from realtime_erc.features.text import TextEncoder, resolve_encoder
    from realtime_erc.features.text_adapter import resolve_adapter
    from realtime_erc.load import LoadMonitor

    load = LoadMonitor(config.load if paced else config.load.with_values({"shedding": False}))
    engine = load_engine(config)
    speakers = None
    if config.speakers.enabled:
        from realtime_erc.speech.speakers import SpeakerTracker

        speakers = SpeakerTracker(config.speakers)
    provenance = engine.info.provenance if engine is not None else {}
    trained_with = provenance.get("features") or {}
    # the live features must be the ones the model was trained on
    heads = resolve_heads(config.features.heads, trained_with.get("heads"))
    encoder = resolve_encoder(config.features.text.encoder, trained_with.get("text"))
    features = config.features.model_copy(
        update={
            "heads": heads,
            "text": config.features.text.model_copy(update={"encoder": encoder}),
        }
    )
    adapter = resolve_adapter(config.features.text.adapter, trained_with.get("text"))
    text = TextEncoder(features.text, adapter=adapter) if config.features.text.enabled else None
    if engine is not None:
        live = feature_dims(features, text.dim if text is not None else None)
        check_live_dims(engine, live, provenance.get("modalities", MODALITIES))
    fusion = None
    if engine is not None:
        from realtime_erc.fusion import fusion_for

        fusion = fusion_for(engine.model_id, config.fusion.mode)
    speech_head = face_head = scores_head = None
    if engine is not None and (config.model.provisional or heads == "scores" or fusion is not None):
        from realtime_erc.features.face_expression import FaceExpressionHead
        from realtime_erc.features.speech_emotion import SpeechEmotionHead

        if config.features.audio.enabled:
            speech_head = SpeechEmotionHead.load()
            if heads == "scores":  # the head that scored the model's corpus, when packaged
                from realtime_erc.features.head_scores import scores_speech_head

                scores_head = scores_speech_head(trained_with.get("audio"))
        if config.features.visual.enabled:
            face_head = FaceExpressionHead.load()
    emit = EmitStage(
        session_id,
        config.session.label_set,
        engine=engine,
        text=text,
        provisional=config.model.provisional,
        load=load,
        modalities=provenance.get("modalities", MODALITIES),
        sequences=provenance.get("sequences", True),
        expects_analysis=True,
        fusion=fusion,
    )
    return [
        Segmenter(config.vad),
        AnalysisStage(
            features,
            speakers=speakers,
            speech_head=speech_head,
            face_head=face_head,
            scores_speech_head=scores_head,
            load=load,
        ),
        AsrStage(config.asr, keep_empty=True, load=load),
        emit,
        PublishStage(
            session_id=session_id,
            label_set=emit.label_set,
            model=emit.model,
            publishers=build_publishers(
                config, extra_publishers, session_id, emit.label_set, emit.model
            ),
            topic_prefix=config.output.topic_prefix,
        ),
    ]


def check_live_dims(engine, live, modalities) -> None:  # Engine, FeatureDims, names
    """Refuse at start, not at the first utterance, a model the configured features do not fit."""
    from realtime_erc.models.base import FeatureDimError

    model = engine.model.dims
    for name in modalities:
        if model.pooled(name) != live.pooled(name):
            raise FeatureDimError(
                f"the model {engine.info.model_id} takes {name} vectors of {model.pooled(name)} "
                f"values, the configured features give {live.pooled(name)}: use the features it "
                f'was trained with (features.{name}, and features.heads = "auto" to follow '
                "the checkpoint) or another model.checkpoint"
            )


def plan_replay(
    recording_dir: Path, config: Config, extra_publishers: list[Publisher] | None = None
) -> SessionPlan:
    """Validate a recording and build the pipeline that replays it."""
    recording = read_recording(recording_dir)
    session_id = config.session.id or recording.session_id
    speed = parse_speed(config.replay.speed)
    source = ReplaySource(recording, speed=speed, chunk_ms=config.replay.chunk_ms)
    stages = build_stages(config, session_id, extra_publishers, paced=speed is not None)
    return SessionPlan(session_id, source, "replay", stages)


def new_session_id() -> str:
    return f"live-{uuid.uuid4().hex[:8]}"


def live_options(config: Config, duration_s: float | None = None):  # -> LiveOptions
    """The capture options of ``[mic]`` and ``[camera]``."""
    from realtime_erc.sources.live import LiveOptions

    return LiveOptions(mic=config.mic, camera=config.camera, duration_s=duration_s)


def plan_live(
    config: Config,
    record_dir: Path | None = None,
    duration_s: float | None = None,
    extra_publishers: list[Publisher] | None = None,
) -> SessionPlan:
    """Open the microphone (and camera) of the configuration and build the live pipeline.

    Devices are validated here, before any model loads; ``record_dir`` also records the
    session there (``run --record``). The plan's source is a :class:`LiveSource`.
    """
    from realtime_erc.sources.live import open_live

    session_id = config.session.id or new_session_id()
    source = open_live(live_options(config, duration_s), session_id, record_dir, "realtime-erc run")
    try:
        stages = build_stages(config, session_id, extra_publishers)
    except BaseException:
        source.close()
        raise
    return SessionPlan(session_id, source, "live", stages)


async def run_session(
    plan: SessionPlan, config: Config, on_pipeline: Callable[[Pipeline], None] | None = None
) -> PipelineStats:
    """Run until the source ends; Ctrl-C / SIGTERM stop the source and drain the rest.

    A second Ctrl-C abandons the drain (every stage is still closed, so files are flushed).
    """
    pipeline = Pipeline(
        plan.source,
        plan.stages,
        source_name=plan.source_name,
        queue_size=config.pipeline.queue_size,
        drain_timeout_s=config.pipeline.drain_timeout_s,
    )
    if on_pipeline is not None:
        on_pipeline(pipeline)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    presses = 0

    def on_signal(signame: str) -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            log.info("%s: stopping the session (finishing what is in flight)", signame)
            pipeline.request_stop()
        elif task is not None:
            log.warning("%s again: stopping now", signame)
            task.cancel()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
    try:
        return await pipeline.run()
    except asyncio.CancelledError:
        if presses < 2:
            raise
        pipeline.stats.stopped_early = True
        return pipeline.stats
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
