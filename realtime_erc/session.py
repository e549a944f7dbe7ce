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
from realtime_erc.events import Event
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
        from realtime_erc.outputs.mqtt import MqttOptions, MqttPublisher

        publishers.append(
            MqttPublisher(
                config.output.mqtt.url,
                session_id=session_id or config.session.id or "unknown",
                label_set=label_set or config.session.label_set,
                model=model,
                topic_prefix=config.output.topic_prefix,
                options=MqttOptions.from_config(config.output.mqtt),
            )
        )
    return publishers + list(extra or [])


def build_stages(
    config: Config, session_id: str, extra_publishers: list[Publisher] | None = None
) -> list[Stage]:
    """The processing chain shared by live capture and replay."""
    label_set = config.session.label_set
    speakers: list[Stage] = []
    if config.speakers.enabled:
        from realtime_erc.speech.speakers import SpeakerOptions, SpeakerStage

        speakers.append(SpeakerStage(SpeakerOptions.from_config(config.speakers)))
    return [
        Segmenter(config.vad),
        AsrStage(config.asr),
        *speakers,
        EmitStage(session_id, label_set),
        PublishStage(
            session_id=session_id,
            label_set=label_set,
            model=None,
            publishers=build_publishers(config, extra_publishers, session_id, label_set),
            topic_prefix=config.output.topic_prefix,
        ),
    ]


def plan_replay(
    recording_dir: Path, config: Config, extra_publishers: list[Publisher] | None = None
) -> SessionPlan:
    """Validate a recording and build the pipeline that replays it."""
    recording = read_recording(recording_dir)
    session_id = config.session.id or recording.session_id
    source = ReplaySource(
        recording, speed=parse_speed(config.replay.speed), chunk_ms=config.replay.chunk_ms
    )
    return SessionPlan(
        session_id, source, "replay", build_stages(config, session_id, extra_publishers)
    )


def new_session_id() -> str:
    return f"live-{uuid.uuid4().hex[:8]}"


def live_options(config: Config, duration_s: float | None = None):  # -> LiveOptions
    """The capture options of ``[mic]`` and ``[camera]``."""
    from realtime_erc.sources.camera import CameraOptions
    from realtime_erc.sources.live import LiveOptions
    from realtime_erc.sources.microphone import MicrophoneOptions

    return LiveOptions(
        mic=MicrophoneOptions.from_config(config.mic),
        camera=CameraOptions.from_config(config.camera),
        duration_s=duration_s,
    )


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
