"""The packaged model presets (``realtime_erc/assets/models.toml``): every ERC checkpoint in the
assets is listed, each entry says what its checkpoint says, names resolve, unknown names are one
error listing the names."""

from __future__ import annotations

from pathlib import Path

import pytest

from realtime_erc.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from realtime_erc.models.presets import (
    ASSETS_DIR,
    PresetError,
    get_preset,
    preset_names,
    presets,
    resolve_checkpoint,
)


def erc_checkpoints() -> list[Path]:
    """The ERC models among the packaged ``.pt`` files, decided by content: text adapters and the
    emotion heads are other formats, which ``read_checkpoint`` refuses."""
    found = []
    for path in sorted(ASSETS_DIR.glob("*.pt")):
        try:
            read_checkpoint(path)
        except CheckpointError:
            continue
        found.append(path)
    return found


def test_every_packaged_erc_checkpoint_is_a_preset():
    listed = {p.path for p in presets()}
    erc = set(erc_checkpoints())
    assert erc, "no ERC checkpoint found among the assets"
    assert erc <= listed, f"not in models.toml: {sorted(p.name for p in erc - listed)}"
    assert all(p.path.is_file() for p in presets())
    assert not any(p.name.startswith("text_adapter_") for p in erc)  # those are not ERC models


def test_the_default_comes_first_and_is_the_live_default():
    from realtime_erc.config import Config
    from realtime_erc.fusion import load_fusion

    assert preset_names()[0] == "default" and Config().model.checkpoint == "default"
    # chosen on development sessions: the MELD-7 text model with its fitted fusion
    default = get_preset("default")
    assert default.path == get_preset("meld7-text").path
    assert default.model_id in load_fusion()
    assert len(set(preset_names())) == len(presets())


@pytest.mark.parametrize("name", preset_names())
def test_each_preset_loads_and_says_what_its_checkpoint_says(name: str):
    preset = get_preset(name)
    model = load_checkpoint(preset.path)
    info = model.checkpoint_info
    assert info.model_id == preset.model_id
    assert (model.label_set, tuple(model.labels)) == (preset.label_set, preset.labels)
    assert info.provenance.get("causal", True), "presets are streaming (causal) models"
    for split in ("valid", "test"):
        stored = info.metrics.get(split) or {}
        for key in ("weighted_f1", "accuracy"):
            listed = getattr(preset.scores, f"{split}_{key}")
            if key in stored:
                assert listed == pytest.approx(stored[key], abs=0.006), (split, key)
    assert preset.cost is not None and preset.cost.ms_per_utterance > preset.cost.text_ms
    assert preset.licence and preset.trained_on
    assert preset.path.stat().st_size < 8_000_000, "packaged checkpoints stay small"


@pytest.mark.parametrize("name", preset_names())
def test_each_preset_text_encoder_is_packaged(name: str):
    """The live pipeline finds the text encoder (and adapter) the checkpoint was trained on
    among the packaged files, not only in a training cache."""
    from realtime_erc.features.text import resolve_encoder
    from realtime_erc.features.text_adapter import PACKAGED_DIR, find_adapter

    info = load_checkpoint(get_preset(name).path).checkpoint_info
    text = info.provenance["features"]["text"]
    assert resolve_encoder("auto", text) in ("minilm", "mpnet")
    if "+" in text:
        adapter = find_adapter(text.split("+", 1)[1], search=[PACKAGED_DIR])
        assert adapter is not None, f"{name}: adapter of {text} is not packaged"


def test_names_and_paths_resolve():
    assert resolve_checkpoint("none") is None
    for preset in presets():
        assert resolve_checkpoint(preset.name) == preset.path
    assert resolve_checkpoint("runs/model.pt") == Path("runs/model.pt")
    assert resolve_checkpoint("~/m.pt") == Path("~/m.pt").expanduser()


def test_an_unknown_name_is_one_error_listing_the_names():
    for call in (lambda: get_preset("meld7-txt"), lambda: resolve_checkpoint("meld7-txt")):
        with pytest.raises(PresetError) as e:
            call()
        message = str(e.value)
        assert "'meld7-txt'" in message and "\n" not in message
        assert all(name in message for name in preset_names())


def test_a_broken_registry_is_one_clear_error(tmp_path: Path):
    path = tmp_path / "models.toml"
    path.write_text('[[preset]]\nname = "x"\n')
    with pytest.raises(PresetError, match="models.toml: preset.0.file"):
        presets(path)
    path.write_text("[[preset]\n")
    with pytest.raises(PresetError, match="cannot be read"):
        presets(path)
