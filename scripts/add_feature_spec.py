"""Store a typed FeatureSpec in checkpoints written before it existed (run once; idempotent).

The spec is read from what the checkpoint's provenance recorded (its extractor identities, the
modalities present in training, sequences) and its feature dims; the weights, their hash and
every other field stay as they are.

    python scripts/add_feature_spec.py realtime_erc/assets/erc_*.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from realtime_erc.models.checkpoint import load_checkpoint, read_checkpoint
from realtime_erc.models.feature_spec import FeatureSpec


def main(paths: list[str]) -> None:
    for name in paths:
        path = Path(name)
        payload = read_checkpoint(path)
        if "feature_spec" in payload:
            print(f"{path}: has a feature spec")
            continue
        before = load_checkpoint(path).checkpoint_info
        spec = FeatureSpec.from_checkpoint(payload, str(path))
        payload["feature_spec"] = spec.model_dump(mode="json")
        torch.save(payload, path)
        after = load_checkpoint(path).checkpoint_info
        assert after.model_id == before.model_id and after.features == spec
        print(f"{path}: {after.model_id} {spec.model_dump_json()}")


if __name__ == "__main__":
    main(sys.argv[1:])
