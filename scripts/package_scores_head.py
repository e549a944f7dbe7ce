"""Package the speech head whose scores the assembled corpus gives its validation and test voices
(fitted on the training actors with the packaged head's recipe; see
``realtime_erc/training/head_crossfit.py``) as ``realtime_erc/assets/speech_emotion_crossfit<K>_
<digest>.pt``. A checkpoint trained with ``features.heads = "scores"`` names that head in its
provenance, and the live pipeline then appends its scores (not the packaged head's) to the audio
vector, as the model saw on voices it had not heard. Deterministic: rerunning it rewrites the
same weights (the head of the default build takes ~2 min on 2 CPU cores, features cached).

    python scripts/package_scores_head.py                 # the default assembled build's head
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime_erc.config import DataConfig  # noqa: E402
from realtime_erc.training.assembled import AssembledOptions  # noqa: E402
from realtime_erc.training.head_crossfit import SpeechScores  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="data directory")
    args = parser.parse_args(argv)
    data = DataConfig().resolve(args.data)
    options = AssembledOptions(head_scores=True)
    scores = SpeechScores(
        data / "ravdess",
        options.train_actors,
        options.valid_actors + options.test_actors,
        options.crossfit_folds,
    )
    path = scores.package()
    print(f"{scores.identity} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
