"""Resumable state: only the run that wrote it resumes; a cut-short or foreign file is ignored."""

from __future__ import annotations

from pathlib import Path

import torch

from realtime_erc.training.resume import load_last, save_last


def test_only_the_same_signature_resumes(tmp_path: Path) -> None:
    last = tmp_path / "run" / "last.pt"
    assert load_last(last, {"lr": 1e-3}) is None  # nothing yet
    save_last(last, {"lr": 1e-3}, model={"w": torch.ones(2)}, state={"epoch": 3})
    saved = load_last(last, {"lr": 1e-3})
    assert saved is not None and saved["state"] == {"epoch": 3}
    assert torch.equal(saved["model"]["w"], torch.ones(2))
    assert load_last(last, {"lr": 2e-3}) is None  # another run's state
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # no temporary left


def test_a_file_cut_short_starts_afresh(tmp_path: Path) -> None:
    last = tmp_path / "last.pt"
    save_last(last, "sig", state={"epoch": 1})
    last.write_bytes(last.read_bytes()[:40])  # a crash in the middle of a plain write
    assert load_last(last, "sig") is None
    last.write_bytes(b"not a checkpoint")
    assert load_last(last, "sig") is None
