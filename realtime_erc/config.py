"""Configuration: pydantic models for every section, loaded from TOML, overridden from the CLI.

Precedence (last wins): the defaults below (mirrored in ``configs/default.toml``), a ``--config``
file, then ``--set section.key=value`` overrides and the dedicated CLI options. Unknown keys and
wrong types are refused with a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from realtime_erc.errors import UserError
from realtime_erc.toml_writer import toml_value


class ConfigError(UserError, ValueError):
    """A configuration problem a user can fix; the message names the key and the fix."""


class Section(BaseModel):
    """A configuration section: unknown keys refused, and frozen once loaded (a changed value
    is a new object: :meth:`with_values`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def with_values(self, values: Mapping[str, Any]) -> Self:
        """A copy with dotted keys set (``{"output.mqtt.enabled": True}``), validated as a
        loaded file is; None values are ignored."""
        data = self.model_dump()
        for key, value in values.items():
            if value is not None:
                _set_dotted(data, key, value)
        try:
            return type(self).model_validate(data)
        except ValidationError as e:
            raise ConfigError(_describe(e, source="derived settings", root=type(self))) from None


class SessionConfig(Section):
    id: str = Field("", description="Session id; empty = the recording's id, or a generated one.")
    label_set: Literal["meld7", "iemocap6"] = "meld7"


class VadConfig(Section):
    """Voice activity detection and utterance segmentation."""

    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Silero speech probability threshold."
    )
    webrtc_gate: bool = Field(True, description="Skip Silero on frames webrtcvad calls silence.")
    webrtc_mode: int = Field(2, ge=0, le=3, description="webrtcvad aggressiveness 0..3.")
    hangover_ms: int = Field(400, ge=50, le=5000, description="Silence that ends an utterance.")
    pre_roll_ms: int = Field(200, ge=0, le=2000, description="Audio kept before speech onset.")
    min_utterance_ms: int = Field(250, ge=0, description="Shorter speech bursts are discarded.")
    max_utterance_s: float = Field(15.0, gt=1.0, description="Longer speech is split at a pause.")
    split_pause_ms: int = Field(
        150, ge=10, description="Shortest pause used to split an over-long utterance."
    )
    loud_voice_db: float = Field(
        20.0,
        ge=0.0,
        description="A voiced window this far over the noise floor counts as speech when Silero "
        "gives it at least loud_voice_min_prob (Silero misses shouts); 0 = off.",
    )
    loud_voice_min_prob: float = Field(
        0.1, ge=0.0, le=1.0, description="The least Silero probability of such a window."
    )
    loud_voice_windows: int = Field(
        3, ge=1, description="Such windows count only from this many in a row (a 32 ms window)."
    )


class AsrConfig(Section):
    model: Literal["tiny.en", "base"] = "tiny.en"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = Field("auto", description="auto = int8 on CPU, float16 on CUDA.")
    beam_size: int = Field(1, ge=1, le=10)
    language: str = "en"
    cpu_threads: int = Field(0, ge=0, description="0 = CTranslate2's default.")
    model_dir: str = Field("", description="Load weights from this directory instead of packages.")
    fit_window: bool = Field(
        True, description="Encode only the audio an utterance needs, not a padded 30 s window."
    )


class ZmqConfig(Section):
    enabled: bool = True
    endpoint: str = "tcp://127.0.0.1:5556"
    wait_for_subscriber_s: float = Field(
        0.0, ge=0.0, description="Hold the first event until a subscriber joins (up to this long)."
    )

    @field_validator("endpoint")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if "://" not in v:
            raise ValueError("must look like tcp://127.0.0.1:5556 or ipc:///path")
        return v


class JsonlConfig(Section):
    path: str = Field("", description="Append every document to this file; empty = off.")


class MqttTlsOptions(Section):
    """TLS towards the broker (also switched on by an ``mqtts://`` url)."""

    enabled: bool = False
    ca_file: str = Field("", description="CA bundle (PEM); empty = the system's.")
    certfile: str = Field("", description="Client certificate (PEM), for brokers that ask.")
    keyfile: str = Field("", description="Client private key (PEM).")
    insecure: bool = Field(False, description="Skip hostname verification (testing only).")


class MqttOptions(Section):
    """MQTT output (STREAM_PROTOCOL.md): QoS 1, retained state and status, last will ``lost``.
    The options of :class:`~realtime_erc.outputs.mqtt.MqttPublisher` and ``MqttSubscriber``."""

    enabled: bool = False
    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host:port or mqtts://host:port")
    username: str = ""
    password: str = ""
    tls: MqttTlsOptions = MqttTlsOptions()
    qos: int = Field(1, ge=0, le=2)
    buffer_size: int = Field(
        10000, ge=1, description="Messages kept while the broker is unreachable (oldest dropped)."
    )
    client_id: str = Field("", description="Empty = realtime-erc-{session}-{random}.")
    keepalive_s: int = Field(30, ge=5)
    reconnect_min_s: float = Field(0.2, gt=0, description="First reconnect delay (doubles).")
    reconnect_max_s: float = Field(10.0, gt=0, description="Longest reconnect delay.")
    connect_timeout_s: float = Field(5.0, gt=0, description="First connection at start-up.")
    close_timeout_s: float = Field(5.0, ge=0, description="Time to deliver the backlog on exit.")
    max_inflight: int = Field(
        32, ge=1, description="Messages published and awaiting their PUBACK at a time (at most)."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("mqtt://", "mqtts://")):
            raise ValueError("must look like mqtt://127.0.0.1:1883 or mqtts://host:8883")
        return v


class BrokerConfig(Section):
    """The embedded amqtt broker (``--broker embedded``) and the dashboard served beside it."""

    embedded: bool = Field(False, description="Start an in-process broker for this run.")
    host: str = Field("127.0.0.1", description="Listen address (loopback).")
    port: int = Field(0, ge=0, le=65535, description="MQTT port; 0 = a free one.")
    ws_port: int = Field(0, ge=0, le=65535, description="MQTT-over-WebSockets port; 0 = free.")
    dashboard: bool = Field(True, description="Serve the web dashboard with the broker.")
    dashboard_port: int = Field(0, ge=0, le=65535, description="Dashboard HTTP port; 0 = free.")


class OutputConfig(Section):
    topic_prefix: str = "erc"
    zmq: ZmqConfig = ZmqConfig()
    jsonl: JsonlConfig = JsonlConfig()
    mqtt: MqttOptions = MqttOptions()


class ReplayConfig(Section):
    speed: str = Field("realtime", description="realtime | max | a factor such as 2.0")
    chunk_ms: int = Field(32, ge=10, le=1000, description="Audio block size fed to the pipeline.")

    @field_validator("speed", mode="before")
    @classmethod
    def _speed(cls, v: object) -> str:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)  # --set replay.speed=2 parses as a number
        if not isinstance(v, str):
            raise ValueError("must be realtime, max or a number")
        parse_speed(v)
        return v


class MicrophoneOptions(Section):
    """Live microphone capture (sounddevice / PortAudio): the options of
    :class:`~realtime_erc.sources.microphone.Microphone`."""

    device: str = Field(
        "default", description="default | an input index | part of its name (realtime-erc devices)."
    )
    block_ms: int = Field(32, ge=5, le=1000, description="Audio block size the device delivers.")
    samplerate: int = Field(0, ge=0, description="Capture rate in Hz; 0 = the device's own.")
    channels: int = Field(
        0, ge=0, description="Channels captured (then averaged); 0 = native, at most 2."
    )
    on_device_lost: Literal["stop", "wait"] = Field(
        "stop", description="stop: end the session cleanly; wait: wait for the device to return."
    )
    wait_timeout_s: float = Field(
        60.0, ge=0.0, description="With on_device_lost = wait: give up after this long; 0 = never."
    )


class CameraOptions(Section):
    """Live camera capture (OpenCV): the options of :class:`~realtime_erc.sources.camera.Camera`."""

    device: str = Field(
        "none", description="none | a camera index | a video file path | a stream URL."
    )
    fps: float = Field(30.0, gt=0, le=240, description="Frames per second requested (at most).")
    width: int = Field(0, ge=0, description="Requested frame width; 0 = the device's default.")
    height: int = Field(0, ge=0, description="Requested frame height; 0 = the device's default.")


class DataConfig(Section):
    """Training/evaluation datasets (never shipped; see the data README)."""

    dir: str = Field(
        "../shared/data",
        description="Dataset directory; relative = to the repository root. "
        "Env REALTIME_ERC_DATA and --data override it.",
    )

    def resolve(self, override: str | Path | None = None) -> Path:
        """The data directory: ``override`` (``--data``), else ``$REALTIME_ERC_DATA``, else
        ``dir`` (relative paths are taken from the repository root). Not checked for existence."""
        import os

        raw = str(override) if override else os.environ.get("REALTIME_ERC_DATA", "") or self.dir
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (DEFAULT_CONFIG_FILE.parent.parent / path).resolve()


class TextOptions(Section):
    """Sentence encoder on the transcript (all-MiniLM-L6-v2, 384-d, or all-mpnet-base-v2): the
    options of :class:`~realtime_erc.features.text.TextEncoder` (which takes the resolved adapter
    file and the device as arguments)."""

    enabled: bool = True
    encoder: Literal["auto", "minilm", "mpnet"] = Field(
        "auto",
        description="auto (the one the ERC checkpoint was trained with, else minilm); minilm: "
        "all-MiniLM-L6-v2 (384-d, fast); mpnet: all-mpnet-base-v2 (768-d, ~5x the compute). "
        "An adapter file (below) brings its own encoder.",
    )
    max_tokens: int = Field(128, ge=8, le=512, description="Longer transcripts are truncated.")
    batch_size: int = Field(16, ge=1, description="Transcripts encoded per forward pass.")
    adapter: str = Field(
        "auto",
        description="Emotion-adapted LoRA for the encoder: auto (the one the ERC checkpoint was "
        "trained with), none (the base encoder), or the path of an adapter file.",
    )


class AudioOptions(Section):
    """Paralinguistic audio descriptors of each utterance: the options of
    :class:`~realtime_erc.features.audio.AudioFeatures`."""

    enabled: bool = True
    backend: Literal["egemaps", "librosa"] = Field(
        "egemaps",
        description="egemaps: openSMILE eGeMAPSv02 (88 + 25/frame; non-commercial licence); "
        "librosa: MFCC/spectral statistics (75 + 25/frame; permissive).",
    )
    min_rms_dbfs: float = Field(
        -60.0, description="Quieter utterances count as silence (audio marked absent)."
    )


class VisualOptions(Section):
    """MediaPipe FaceLandmarker on the frames of each utterance (52 blendshapes + 12 geometry):
    the options of :class:`~realtime_erc.features.visual.FaceFeatures`."""

    enabled: bool = True
    num_faces: int = Field(4, ge=1, le=50, description="Faces tracked per frame (at most).")
    speaker_face: Literal["mouth_sync", "largest"] = Field(
        "mouth_sync",
        description="mouth_sync: the face whose mouth moves with the voice; largest: the biggest.",
    )
    max_fps: float = Field(
        5.0, gt=0, le=60, description="Frames analysed per second (the rest are skipped)."
    )
    buffer_s: float = Field(30.0, gt=0, description="Seconds of analysed frames kept.")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="Face detection threshold.")


class FeaturesConfig(Section):
    heads: Literal["auto", "none", "scores"] = Field(
        "auto",
        description="Emotion heads' log-probabilities appended to the audio (8) and visual (7) "
        "vectors: auto (as the ERC checkpoint was trained), none, or scores.",
    )
    text: TextOptions = TextOptions()
    audio: AudioOptions = AudioOptions()
    visual: VisualOptions = VisualOptions()


class SpeakerOptions(Section):
    """Speaker attribution (realtime_erc/speech/speakers.py): resemblyzer voice embeddings,
    re-clustered at every utterance (or assigned online): the options of
    :class:`~realtime_erc.speech.speakers.SpeakerTracker`."""

    enabled: bool = True
    threshold: float = Field(
        0.3,
        gt=0.0,
        lt=2.0,
        description="Cosine distance above which a voice opens a new speaker.",
    )
    max_speakers: int = Field(8, ge=1, description="Beyond this, voices join the nearest speaker.")
    min_speech_s: float = Field(
        0.3, ge=0.0, description="Less voiced audio than this is left unattributed."
    )
    enrol: dict[str, str] = Field(
        default_factory=dict,
        description='Named speakers from reference audio: {name = "path.wav"}.',
    )
    method: Literal["recluster", "online"] = Field(
        "recluster",
        description="recluster: all recent utterances re-clustered at each one (emotion-robust "
        "voices); online: the nearest running centroid takes each utterance.",
    )
    projection: str = Field(
        "default",
        description="recluster: default (the packaged emotion-removing projection), none (raw "
        "embeddings) or the path of a fitted projection file.",
    )
    centre: bool = Field(
        False,
        description="recluster: also subtract the projection's mean voice (then set threshold "
        "near 0.7).",
    )
    window: int = Field(
        200, ge=1, description="recluster: the most recent utterances re-clustered (bounds cost)."
    )
    restarts: int = Field(
        4, ge=0, description="recluster: k-means++ starts tried besides the previous partition."
    )


class PipelineConfig(Section):
    queue_size: int = Field(
        32,
        ge=1,
        description="Bound of every inter-stage queue (small, so a slow pipeline drops camera "
        "frames at the source instead of queueing seconds of them).",
    )
    drain_timeout_s: float = Field(30.0, gt=0, description="Time allowed to flush on shutdown.")


class ModelConfig(Section):
    """The emotion model that labels each utterance."""

    checkpoint: str = Field(
        "default",
        description="default = the packaged live model; another packaged model by name "
        "(`realtime-erc models`); a path to a checkpoint from `realtime-erc train`; none = no "
        "model (events carry no label).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA if present.")
    provisional: bool = Field(
        True,
        description="Publish an audio/visual-only provisional event as soon as an utterance "
        "closes (the final one follows with the transcript).",
    )


class FusionConfig(Section):
    """Late fusion of the model's scores with the emotion heads' (realtime_erc/fusion.py)."""

    mode: Literal["auto", "off"] = Field(
        "auto",
        description="auto = the fusion fitted for the running model on development sessions "
        "(assets/fusion.toml), if it has one; off = the model's scores as they are.",
    )


class LoadPolicy(Section):
    """The overload policy (realtime_erc/load.py): work shed, in order, as the lag grows; what
    :class:`~realtime_erc.load.LoadMonitor` follows."""

    shedding: bool = Field(True, description="false = never shed (latency then unbounded).")
    shed_thresholds_s: tuple[float, ...] = Field(
        (0.5, 1.0, 2.0, 4.0),
        min_length=4,
        max_length=4,
        description="Lag (s) at which provisional events, video analysis, audio/visual "
        "features, then transcription are skipped.",
    )

    @field_validator("shed_thresholds_s")
    @classmethod
    def _increasing(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if list(v) != sorted(v) or v[0] <= 0:
            raise ValueError("must be positive and increasing, e.g. [0.5, 1.0, 2.0, 4.0]")
        return v


TextFeaturesConfig = TextOptions
"""The former name of :class:`TextOptions`."""


class ServeOptions(Section):
    """``realtime-erc serve``: conversations streamed in over WebSockets (INGEST_PROTOCOL.md)."""

    host: str = Field(
        "127.0.0.1", description="Listen address; anything but loopback needs tokens."
    )
    port: int = Field(8765, ge=0, le=65535, description="HTTP/WebSocket port; 0 = a free one.")
    max_sessions: int = Field(
        16, ge=1, description="Sessions at once; one more is refused with close code 1013."
    )
    tokens: tuple[str, ...] = Field(
        (), description="Access tokens a client must present (Bearer header or access_token)."
    )
    token_file: str = Field("", description="A file of access tokens, one per line.")
    allowed_origins: tuple[str, ...] = Field(
        (), description="Origins browser pages may connect from; empty = the server's own."
    )
    record_dir: str = Field("", description="Record every session here; empty = record nothing.")
    max_message_bytes: int = Field(
        1 << 20, ge=1024, description="Largest WebSocket message (1009 beyond it)."
    )
    max_frame_bytes: int = Field(512 * 1024, ge=1024, description="Largest JPEG frame.")
    max_fps: float = Field(15.0, gt=0, description="Most video frames per second of audio.")
    max_session_s: float = Field(4 * 3600.0, gt=0, description="Longest session (audio seconds).")
    idle_timeout_s: float = Field(
        60.0, gt=0, description="A started session that sends nothing this long is ended (1008)."
    )
    resume_s: float = Field(
        300.0,
        gt=0,
        description="serve --ray: how long a session whose server replica was lost keeps its "
        "conversation context for a client that reconnects with the same session_id.",
    )
    ray_front: Literal["haproxy", "serve-proxy"] = Field(
        "haproxy",
        description="serve --ray on a Ray it starts: what accepts connections. haproxy (bundled "
        "with ray[serve]) hands each WebSocket straight to an ingress replica's own port "
        "(Serve's direct ingress); serve-proxy relays every message through Serve's Python "
        "proxy as a Ray call (8 sessions: a third more CPU, 1.5x the latency; "
        "docs/benchmarks/serve-notes.md). A cluster that serve --ray joins keeps its own.",
    )
    sample_rates: tuple[int, ...] = Field(
        (8000, 16000, 22050, 24000, 32000, 44100, 48000), description="Audio rates accepted."
    )
    max_channels: int = Field(2, ge=1, le=8, description="Most audio channels accepted.")
    allocator: Literal["jemalloc", "system"] = Field(
        "jemalloc",
        description="Memory allocator of `serve`: jemalloc keeps its resident memory flat "
        "over hours; the system's malloc fragments under many sessions (see "
        "docs/benchmarks/soak-serve.md). Without libjemalloc2 installed: the system's.",
    )
    model_threads: int = Field(
        1,
        ge=0,
        description="CPU threads of one model call (torch, and Whisper unless asr.cpu_threads "
        "is set): the sessions' concurrent calls fill the cores; every call with a team of "
        "its own oversubscribes them. 0 = the libraries' defaults.",
    )


class Config(Section):
    session: SessionConfig = SessionConfig()
    vad: VadConfig = VadConfig()
    asr: AsrConfig = AsrConfig()
    output: OutputConfig = OutputConfig()
    broker: BrokerConfig = BrokerConfig()
    replay: ReplayConfig = ReplayConfig()
    mic: MicrophoneOptions = MicrophoneOptions()
    camera: CameraOptions = CameraOptions()
    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    speakers: SpeakerOptions = SpeakerOptions()
    model: ModelConfig = ModelConfig()
    fusion: FusionConfig = FusionConfig()
    load: LoadPolicy = LoadPolicy()
    pipeline: PipelineConfig = PipelineConfig()
    serve: ServeOptions = ServeOptions()
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def parse_speed(value: str) -> float | None:
    """``realtime`` → 1.0, ``max`` → None (no pacing), ``"2.5"`` → 2.5."""
    if value == "realtime":
        return 1.0
    if value == "max":
        return None
    try:
        factor = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not realtime, max or a number") from None
    if not factor > 0:
        raise ValueError(f"{value!r} must be positive")
    return factor


DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def load_config(
    path: Path | None = None, overrides: list[str] | None = None, **options: Any
) -> Config:
    """Build the effective configuration.

    ``path``: a TOML file merged over the defaults. ``overrides``: ``section.key=value`` strings
    (values parsed as TOML, bare words as strings). ``options``: dotted keys set by dedicated CLI
    options (``{"output.zmq.endpoint": "tcp://..."}``); None values are ignored.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_toml(Path(path))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. asr.model=base")
        _set_dotted(data, key.strip(), _parse_value(raw.strip()))
    for key, value in options.items():
        if value is not None:
            _set_dotted(data, key, value)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, source=str(path) if path else "command line")) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: pass an existing file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to parse") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text: save it as UTF-8 TOML") from None
    except OSError as e:
        raise ConfigError(
            f"cannot read config file {path}: {e.strerror}. Pass a readable TOML file"
        ) from None


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    except RecursionError:
        raise ConfigError(f"--set value {raw[:40]!r}...: nested too deeply") from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is a value, not a section")
        node = child
    node[leaf] = value


def _describe(error: ValidationError, source: str, root: type[BaseModel] | None = None) -> str:
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parent = _section_at(err["loc"][:-1], root or Config)
            known = ", ".join(parent.model_fields) if parent else ""
            lines.append(f"{key}: unknown key (known keys here: {known})")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid configuration from {source}:\n  " + "\n  ".join(lines)


def _section_at(loc: tuple, model: type[BaseModel]) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


def config_to_toml(config: Config, comments: bool = False) -> str:
    """Render a configuration as TOML (``realtime-erc config show``); ``comments`` adds each
    key's description."""
    lines: list[str] = []

    def emit(model: BaseModel, prefix: str) -> None:
        fields = type(model).model_fields
        scalars = {k: v for k, v in model if not isinstance(v, BaseModel)}
        if prefix and scalars:
            lines.append(f"\n[{prefix}]")
        for key, value in scalars.items():
            line = f"{key} = {toml_value(value)}"
            description = fields[key].description
            if comments and description:
                line = f"{line:<40} # {description}"
            lines.append(line)
        for key, value in model:
            if isinstance(value, BaseModel):
                emit(value, f"{prefix}.{key}" if prefix else key)

    emit(config, "")
    return "\n".join(lines).lstrip("\n") + "\n"
