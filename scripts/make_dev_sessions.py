"""Generate the development sessions (valid/ and test/ halves, one folder per condition) from the
data directory, for ``realtime-erc evaluate-session``. Reproducible from ``--seed``; written to
the cache (never committed). See ``realtime_erc/training/dev_sessions.py`` for what each
condition is.

    python scripts/make_dev_sessions.py                       # ~/.cache/realtime-erc/dev-sessions
    python scripts/make_dev_sessions.py --limit 1 --out /tmp/dev --max-utterances 4
    realtime-erc evaluate-session ~/.cache/realtime-erc/dev-sessions/valid --out valid.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime_erc.config import DataConfig  # noqa: E402
from realtime_erc.features.assets import cache_root  # noqa: E402
from realtime_erc.training.dev_sessions import (  # noqa: E402
    CONDITIONS,
    HALVES,
    DevOptions,
    generate,
)
from realtime_erc.training.emotion_data import DataError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    defaults = DevOptions()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: <cache root>/dev-sessions)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data directory (default: $REALTIME_ERC_DATA, else data.dir)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most N sessions/dialogues per condition and corpus",
    )
    parser.add_argument("--voice-sessions", type=int, default=defaults.voice_sessions)
    parser.add_argument("--meld-dialogues", type=int, default=defaults.meld_dialogues)
    parser.add_argument("--iemocap-dialogues", type=int, default=defaults.iemocap_dialogues)
    parser.add_argument("--mixed-dialogues", type=int, default=defaults.mixed_dialogues)
    parser.add_argument("--max-utterances", type=int, default=defaults.max_utterances)
    parser.add_argument("--halves", nargs="+", choices=HALVES, default=list(HALVES))
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    out = args.out or cache_root() / "dev-sessions"
    data = DataConfig().resolve(args.data)
    options = DevOptions(
        seed=args.seed,
        voice_sessions=args.voice_sessions,
        meld_dialogues=args.meld_dialogues,
        iemocap_dialogues=args.iemocap_dialogues,
        mixed_dialogues=args.mixed_dialogues,
        max_utterances=args.max_utterances,
        halves=tuple(args.halves),
        conditions=tuple(args.conditions),
    ).limited(args.limit)
    start = time.perf_counter()
    try:
        written = generate(data, out, options, progress=logging.info)
    except DataError as e:
        sys.exit(f"error: {e}")
    logging.info(
        "wrote %d sessions under %s in %.0f s", len(written), out, time.perf_counter() - start
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
