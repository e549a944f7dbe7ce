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
from typing import TYPE_CHECKING, Any

from realtime_erc.assemble import UtteranceAssembler
from realtime_erc.config import Config, parse_speed
from realtime_erc.emit import EventStage
from realtime_erc.events import MODALITIES, Event, Resumption
from realtime_erc.inference import InferenceStage
from realtime_erc.outputs.jsonl import JsonlWriter
from realtime_erc.outputs.publisher import Publisher, PublishStage
from realtime_erc.outputs.zmq import ZmqPublisher
from realtime_erc.pipeline import Parallel, Pipeline, PipelineStats, Stage
from realtime_erc.sources.recording import ReplaySource, read_recording
from realtime_erc.speech.asr import AsrStage
from realtime_erc.speech.segmenter import Segmenter

if TYPE_CHECKING:
    from realtime_erc.config import FeaturesConfig
    from realtime_erc.engine import Engine
    from realtime_erc.features.text import TextEncoder

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


@dataclass
class SessionModels:
    """The models a session uses, loaded once: a server shares one set across its sessions
    (every per-session state lives in the stages, the speech heads' per-speaker statistics in
    per-session views, the conversation graph in the engine under the session's id)."""

    engine: Any  # Engine | None
    features: Any  # FeaturesConfig, resolved to what the model was trained on
    spec: Any  # FeatureSpec | None
    text: Any  # TextEncoder | None
    fusion: Any  # FusionParams | None
    speech_head: Any = None  # SpeechEmotionHead | None
    face_head: Any = None  # FaceExpressionHead | None
    scores_head: Any = None  # SpeechEmotionHead | None
    batcher: Any = None  # AsyncEngine | None: steps of concurrent sessions in one batch
    transcriber: Any = None  # Transcriber | None (None: each session's ASR loads its own)
    text_batcher: Any = None  # MicroBatcher over text.encode_batch, shared by sessions
    voice_encoder: Any = None  # resemblyzer VoiceEncoder shared by the speaker trackers
    asr_batcher: Any = None  # MicroBatcher over transcriber.transcribe_batch
    voice_batcher: Any = None  # MicroBatcher over speakers.embed_voices (voice_encoder)

    def batchers(self) -> list[Any]:
        """The batchers shared by sessions (to close with the server)."""
        found = (self.batcher, self.text_batcher, self.asr_batcher, self.voice_batcher)
        return [b for b in found if b is not None]

    @property
    def label_set(self) -> str | None:
        return self.engine.label_set if self.engine is not None else None

    @property
    def model_id(self) -> str | None:
        return self.engine.model_id if self.engine is not None else None


def live_features(config: Config, engine: Engine | None) -> FeaturesConfig:
    """The configured features, with the heads and text encoder ``engine`` was trained on."""
    from realtime_erc.features.head_scores import resolve_heads
    from realtime_erc.features.text import resolve_encoder

    spec = engine.info.features if engine is not None else None
    heads = resolve_heads(config.features.heads, spec.heads if spec else None)
    encoder = resolve_encoder(config.features.text.encoder, spec.text if spec else None)
    return config.features.with_values({"heads": heads, "text.encoder": encoder})


def text_encoder(config: Config, engine: Engine | None) -> TextEncoder | None:
    """The sentence encoder (and adapter) ``engine`` reads; None when text is off."""
    from realtime_erc.features.text import TextEncoder
    from realtime_erc.features.text_adapter import resolve_adapter

    if not config.features.text.enabled:
        return None
    spec = engine.info.features if engine is not None else None
    adapter = resolve_adapter(config.features.text.adapter, spec.text if spec else None)
    return TextEncoder(live_features(config, engine).text, adapter=adapter)


def load_models(config: Config) -> SessionModels:
    """The configured model, and the text encoder and emotion heads the live features need,
    resolved against what the model was trained on (its :class:`FeatureSpec`); a live
    configuration it cannot take is refused here, before any session starts."""
    from realtime_erc.features.dims import feature_dims

    engine = load_engine(config)
    spec = engine.info.features if engine is not None else None
    features = live_features(config, engine)
    heads = features.heads
    text = text_encoder(config, engine)
    if spec is not None:
        live = feature_dims(features, text.dim if text is not None else None)
        spec.check_live(config.features, live, engine.model_id)
    models = SessionModels(engine, features, spec, text if engine is not None else None, None)
    if engine is None:
        return models
    from realtime_erc.fusion import fusion_for

    models.fusion = fusion_for(engine.model_id, config.fusion.mode)
    if config.model.provisional or heads == "scores" or models.fusion is not None:
        from realtime_erc.features.face_expression import FaceExpressionHead
        from realtime_erc.features.speech_emotion import SpeechEmotionHead, speech_head_path

        if config.features.audio.enabled:
            models.speech_head = SpeechEmotionHead.load(speech_head_path(config.features.audio))
            if heads == "scores":  # the head that scored the model's corpus, when packaged
                from realtime_erc.features.head_scores import scores_speech_head

                models.scores_head = scores_speech_head(spec.audio)
        if config.features.visual.enabled:
            models.face_head = FaceExpressionHead.load()
    return models


def build_stages(
    config: Config,
    session_id: str,
    extra_publishers: list[Publisher] | None = None,
    *,
    paced: bool = True,
    models: SessionModels | None = None,
    resumed: Resumption | None = None,
) -> list[Stage]:
    """The processing chain shared by live capture, replay and the server's sessions:

    segmenter → (analysis ‖ transcription) → assembler → inference → events → publish

    The analysis (speaker, audio/visual features, the emotion heads' scores) and the
    transcription of each segment run side by side; the assembler joins them into the
    utterance's features; inference is the model's streaming step (fused with the heads');
    events formats the provisional (from the analysis) and final (from the inference) events.

    ``paced``: the source runs at (a multiple of) real time. An unpaced replay (``--speed max``)
    is always "behind" by design, so the overload policy is off for it: every utterance gets
    the full treatment. ``models``: shared models (default: loaded for this session alone).
    ``resumed``: the session goes on after its server lost it (utterance ids go on from
    there, and the online status says so).
    """
    from realtime_erc.features.analysis import AnalysisStage
    from realtime_erc.load import LoadMonitor

    load = LoadMonitor(config.load if paced else config.load.with_values({"shedding": False}))
    models = models or load_models(config)
    engine, spec = models.engine, models.spec
    speakers = None
    if config.speakers.enabled:
        from realtime_erc.speech.speakers import SpeakerTracker

        speakers = SpeakerTracker(config.speakers, encoder=models.voice_encoder)

    def own(head):  # this session's per-speaker statistics over the shared network
        return head.for_session() if head is not None else None

    label_set = engine.label_set if engine is not None else config.session.label_set
    model = engine.model_id if engine is not None else None
    return [
        Segmenter(config.vad, first_id=resumed.next_utterance_id if resumed else 0),
        Parallel(
            AnalysisStage(
                models.features,
                speakers=speakers,
                speech_head=own(models.speech_head),
                face_head=models.face_head,
                scores_speech_head=own(models.scores_head),
                load=load,
                voices=models.voice_batcher,
            ),
            AsrStage(
                config.asr,
                keep_empty=True,
                load=load,
                transcriber=models.transcriber,
                batcher=models.asr_batcher,
            ),
            queue_size=config.pipeline.queue_size,
        ),
        UtteranceAssembler(
            engine.model.dims if engine is not None else None,
            models.text,
            modalities=spec.modalities if spec else MODALITIES,
            sequences=spec.sequences if spec else True,
            batcher=models.text_batcher,
        ),
        InferenceStage(session_id, engine, models.fusion, batcher=models.batcher),
        EventStage(
            session_id,
            label_set,
            engine.labels if engine is not None else (),
            model,
            provisional=config.model.provisional,
            load=load,
        ),
        PublishStage(
            session_id=session_id,
            label_set=label_set,
            model=model,
            publishers=build_publishers(config, extra_publishers, session_id, label_set, model),
            topic_prefix=config.output.topic_prefix,
            resumed=resumed,
        ),
    ]


def plan_replay(
    recording_dir: Path,
    config: Config,
    extra_publishers: list[Publisher] | None = None,
    *,
    models: SessionModels | None = None,
) -> SessionPlan:
    """Validate a recording and build the pipeline that replays it (over ``models`` when
    given, else over models loaded for it)."""
    recording = read_recording(recording_dir)
    session_id = config.session.id or recording.session_id
    speed = parse_speed(config.replay.speed)
    source = ReplaySource(recording, speed=speed, chunk_ms=config.replay.chunk_ms)
    stages = build_stages(
        config, session_id, extra_publishers, paced=speed is not None, models=models
    )
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
        # not on the main thread (a Ray actor's method): the caller owns the signals
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
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


async def run_with_services(
    config: Config,
    make_plan: Callable[[Config], SessionPlan],
    announce: Callable[[str], None] | None = None,
    on_plan: Callable[[SessionPlan], None] | None = None,
) -> PipelineStats:
    """A session as the commands run it: first the services ``config`` asks for (the embedded
    broker and dashboard), then the plan, built by ``make_plan`` for the configuration that
    publishes to them and off the event loop (models load meanwhile without stalling the
    broker), then the run. ``on_plan`` sees the plan before it runs; a live source is the
    caller's to close once the loop has ended (its devices stop off the loop).
    """
    from realtime_erc.dashboard.server import embedded_services

    async with embedded_services(config, announce) as services:
        plan = await asyncio.to_thread(make_plan, services.config)
        if on_plan is not None:
            on_plan(plan)
        return await run_session(plan, services.config)
