"""Rewrite text-adapter files from format 1 (the hand-written LoRA) to format 2 (peft), in place.

    python scripts/convert_adapters_peft.py  # the packaged assets/text_adapter_*.pt
    python scripts/convert_adapters_peft.py PATH ... [--scores DATA_DIR]

Only the LoRA tensors' names change (``<layer>.lora_A`` -> ``base_model.model.<layer>.lora_A.
weight``, :func:`~realtime_erc.features.lora.legacy_state`): the same float32 tensors, every
other field as it was, plus ``digest``: the file's content digest before the conversion, which
keeps naming it (:attr:`~realtime_erc.features.text_adapter.TextAdapter.identity`) in the ERC
checkpoints and feature caches built on its vectors. Each converted file is checked before it
replaces the original: its encoder, merged by peft, must have exactly the weights the
hand-written LoRA merged (``W + (alpha / r) · B A`` in float32, computed here). With
``--scores``, the head is also scored on its corpus's valid split (on one CPU thread, as the
CPU-trained adapters were) and must reproduce the recorded ``info["valid"]`` scores exactly;
those of adapters trained on CUDA (bf16, against the rebuilt base of
``scripts/gpu_text_adapters.py``) are only reported. Files already in format 2 are left alone,
so the script can run again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from realtime_erc.features.lora import legacy_state  # noqa: E402
from realtime_erc.features.text import encoder_spec, load_sentence_encoder  # noqa: E402
from realtime_erc.features.text_adapter import (  # noqa: E402
    FORMAT,
    LEGACY_FORMAT,
    PACKAGED_DIR,
    TextAdapter,
)


def hand_merged(data: dict) -> dict[str, torch.Tensor]:
    """The base encoder's weights with the format-1 adapters merged as the hand-written LoRA
    merged them: every adapted ``nn.Linear``'s ``weight + (alpha / rank) · (lora_B @ lora_A)``."""
    model = load_sentence_encoder("cpu", spec=encoder_spec(data["base"]))[0].auto_model
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    scale = float(data["lora"]["alpha"]) / int(data["lora"]["rank"])
    state = data["state"]
    layers = {k.rsplit(".", 1)[0] for k in state}
    for layer in layers:
        delta = state[f"{layer}.lora_B"] @ state[f"{layer}.lora_A"]
        weights[f"{layer}.weight"] = weights[f"{layer}.weight"] + scale * delta
    return weights


def check(path: Path, reference: dict[str, torch.Tensor]) -> None:
    """``path`` (converted) loads through peft into exactly the ``reference`` weights."""
    merged = load_sentence_encoder("cpu", adapter=TextAdapter.load(path))[0].auto_model
    merged = merged.state_dict()
    if merged.keys() != reference.keys():
        raise SystemExit(f"{path.name}: other parameters after merging")
    worst = max((merged[k] - reference[k]).abs().max().item() for k in merged)
    if worst != 0.0:
        raise SystemExit(f"{path.name}: merged weights differ by up to {worst:g}")
    print(f"  merged by peft: the same {len(merged)} tensors, bit for bit")


def convert(path: Path, data_dir: Path | None) -> bool:
    raw = path.read_bytes()
    data = torch.load(path, map_location="cpu", weights_only=False)
    if data.get("format") == FORMAT:
        print(f"{path.name}: already in {FORMAT}")
        return False
    if data.get("format") != LEGACY_FORMAT:
        raise SystemExit(f"{path}: not a text adapter")
    reference = hand_merged(data)
    converted = dict(data)
    converted["format"] = FORMAT
    converted["state"] = legacy_state(data["state"])
    converted["digest"] = hashlib.sha256(raw).hexdigest()[:12]
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(converted, tmp)
    print(f"{path.name}: {len(raw)} -> {tmp.stat().st_size} bytes, digest {converted['digest']}")
    check(tmp, reference)
    if data_dir is not None:
        from realtime_erc.training.text_finetune import head_scores

        got = head_scores(TextAdapter.load(tmp), data_dir)
        rec = data["info"]["valid"]
        pair = (got["weighted_f1"], got["accuracy"])
        on_cuda = data["info"].get("options", {}).get("device") == "cuda"
        if pair != (rec["valid_weighted_f1"], rec["valid_accuracy"]) and on_cuda:
            print(f"  valid scores {pair}; recorded on CUDA {rec}: not reproducible on the CPU")
        elif pair != (rec["valid_weighted_f1"], rec["valid_accuracy"]):
            tmp.unlink()
            raise SystemExit(f"{path.name}: valid scores {pair}, recorded {rec}")
        else:
            print(f"  valid weighted F1 {pair[0]}, accuracy {pair[1]}: as recorded")
    tmp.replace(path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--scores", type=Path, metavar="DATA_DIR", help="check valid scores")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the recorded scores were computed on one thread
    paths = args.paths or sorted(PACKAGED_DIR.glob("text_adapter_*.pt"))
    done = sum(convert(p, args.scores) for p in paths)
    print(f"{done} of {len(paths)} converted")


if __name__ == "__main__":
    main()
