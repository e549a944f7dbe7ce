from pathlib import Path

import pytest
from pydantic import ValidationError

from realtime_erc.config import (
    DEFAULT_CONFIG_FILE,
    Config,
    ConfigError,
    config_to_toml,
    load_config,
    parse_speed,
)


def test_default_toml_mirrors_the_models():
    assert load_config(DEFAULT_CONFIG_FILE) == Config()
    # every key is written out, with its description (regenerate with config_to_toml)
    text = DEFAULT_CONFIG_FILE.read_text()
    assert text.endswith(config_to_toml(Config(), comments=True))


def test_show_output_round_trips(tmp_path: Path):
    config = load_config(overrides=["asr.model=base", "vad.hangover_ms=300", "replay.speed=2.5"])
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config))
    assert load_config(path) == config
    assert config.asr.model == "base" and config.vad.hangover_ms == 300


def test_precedence_file_then_set_then_options(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[asr]\nmodel = "base"\nbeam_size = 3\n[output.zmq]\nendpoint = "tcp://127.0.0.1:1"\n'
    )
    config = load_config(
        path, ["asr.beam_size=2"], **{"output.zmq.endpoint": "tcp://127.0.0.1:2", "asr.model": None}
    )
    assert (config.asr.model, config.asr.beam_size) == ("base", 2)
    assert config.output.zmq.endpoint == "tcp://127.0.0.1:2"


def test_unknown_key_is_named_with_the_known_ones(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text("[asr]\nmodle = 'base'\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert "asr.modle: unknown key" in message and "model" in message and str(path) in message


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match=r"vadd: unknown key"):
        load_config(overrides=["vadd.threshold=0.3"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("vad.hangover_ms=soon", "vad.hangover_ms"),
        ("vad.threshold=2.0", "vad.threshold"),
        ("asr.model=large", "asr.model"),
        ("replay.speed=fast", "replay.speed"),
        ("output.zmq.endpoint=localhost", "output.zmq.endpoint"),
    ],
)
def test_wrong_type_or_value_names_the_key(override: str, key: str):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert key in str(e.value)


def test_malformed_override_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["asr.model"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[asr\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_parse_speed():
    assert parse_speed("realtime") == 1.0
    assert parse_speed("max") is None
    assert parse_speed("2") == 2.0
    for bad in ("0", "-1", "fast"):
        with pytest.raises(ValueError):
            parse_speed(bad)


def test_a_loaded_configuration_is_frozen_and_changes_make_validated_copies():
    config = load_config(overrides=["asr.model=base"])
    with pytest.raises(ValidationError, match="frozen"):
        config.asr.model = "tiny.en"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        config.output = config.output  # type: ignore[misc]
    changed = config.with_values({"output.mqtt.enabled": True, "asr.beam_size": None})
    assert changed.output.mqtt.enabled and not config.output.mqtt.enabled
    assert changed.asr.model == "base" and changed.asr.beam_size == config.asr.beam_size
    with pytest.raises(ConfigError, match=r"asr\.beam_size: .*less than or equal to 10"):
        config.with_values({"asr.beam_size": 99})
    with pytest.raises(ConfigError, match=r"asr\.nope: unknown key"):
        config.with_values({"asr.nope": 1})


def test_components_take_their_frozen_config_sections():
    """One configuration system: each component's options are its section of ``Config``."""
    from realtime_erc.features.audio import AudioFeatures
    from realtime_erc.features.text import TextEncoder
    from realtime_erc.features.visual import FaceFeatures
    from realtime_erc.load import LoadMonitor
    from realtime_erc.outputs.mqtt import MqttPublisher
    from realtime_erc.sources.live import LiveOptions
    from realtime_erc.speech.speakers import SpeakerTracker

    config = load_config(
        overrides=[
            "features.audio.backend=librosa",
            "features.visual.num_faces=2",
            "speakers.method=online",
            "load.shedding=false",
            "output.mqtt.url=mqtts://broker:8884",
            "mic.device=pulse",
        ]
    )
    features = config.features
    components = [
        (AudioFeatures(features.audio), features.audio),
        (TextEncoder(features.text), features.text),
        (FaceFeatures(features.visual, running_mode="image"), features.visual),
        (SpeakerTracker(config.speakers), config.speakers),
        (MqttPublisher(config.output.mqtt, "s1", "meld7"), config.output.mqtt),
    ]
    for component, section in components:
        assert component.options is section
        key = next(iter(type(section).model_fields))
        with pytest.raises(ValidationError, match="frozen"):
            setattr(component.options, key, getattr(section, key))
    assert AudioFeatures(features.audio).dim == 75
    assert TextEncoder(features.text).spec.name == "all-MiniLM-L6-v2"  # encoder auto: minilm
    publisher = components[4][0]
    assert (publisher.address.host, publisher.address.port, publisher.address.tls) == (
        "broker",
        8884,
        True,
    )
    load = LoadMonitor(config.load)
    load.observe(60.0)
    assert load.policy is config.load and load.level == 0  # shedding off
    live = LiveOptions(mic=config.mic, camera=config.camera)
    assert live.mic.device == "pulse" and live.camera.device == "none"


def test_load_thresholds_are_checked_by_the_section():
    with pytest.raises(ConfigError, match=r"load\.shed_thresholds_s: .*positive and increasing"):
        load_config(overrides=["load.shed_thresholds_s=[1.0, 0.5, 2.0, 4.0]"])
    with pytest.raises(ConfigError, match=r"load\.shed_thresholds_s: .*at least 4"):
        load_config(overrides=["load.shed_thresholds_s=[1.0]"])
