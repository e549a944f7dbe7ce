"""Fit the speaker tracker's emotion-robust projection and package it as
``realtime_erc/assets/speaker_projection.pt``: on RAVDESS actors 1-16 (the speech head's training
actors; 17-20 stay unseen), the top directions of their actor-centred voices' emotion × intensity
means, which the ``recluster`` method removes before clustering (and their mean voice, used only
with ``speakers.centre``). The same recipe re-fits it per session in ``realtime-erc bench
speakers``. Deterministic (~1.5 min on 2 CPU cores: 960 clips embedded).

    python scripts/make_speaker_projection.py [--data DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime_erc.bench.speakers import (  # noqa: E402
    PROJECTION_ACTORS,
    EmbeddingCache,
    fit_projection,
    ravdess_rows,
)
from realtime_erc.config import DataConfig  # noqa: E402
from realtime_erc.speech.speakers import DEFAULT_PROJECTION  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="data directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_PROJECTION, help="output file")
    args = parser.parse_args(argv)
    data = DataConfig().resolve(args.data)
    rows = ravdess_rows(data)
    projection = fit_projection(rows, EmbeddingCache(data).many, set(PROJECTION_ACTORS))
    projection.save(args.out)
    print(f"{args.out}: rank {projection.basis.shape[1]}, {projection.meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
