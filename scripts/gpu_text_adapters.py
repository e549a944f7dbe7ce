"""Train MPNet text adapters on a lent GPU machine, in one call, from what fits in its upload.

The device machine reaches nothing outside it, and a call carries at most 64 MiB, so the
packaged all-mpnet-base-v2 (438 MB of float32) travels compressed, in two parts, over two calls:

    python scripts/gpu_text_adapters.py pack --out .gpu          # here: .gpu/a, .gpu/b, .gpu/data
    # device call 1 (carry .gpu/a): cp -r .gpu/a /tmp/pack
    # device call 2 (carry .gpu/b .gpu/data): cp -r .gpu/b/* /tmp/pack/ &&
    #   python3 scripts/gpu_text_adapters.py train --pack /tmp/pack --data .gpu/data --out $OUT

``pack`` stores every large weight matrix as int8 in groups of 64 values with a float16 scale
per group (relative error ~0.3 %), and of the word-embedding matrix only the rows the ERC
corpora's text ever uses (the others are never looked up in training). ``train`` rebuilds the
sentence-transformers directory from them, checks the rebuilt encoder against reference
embeddings computed here in float32, and runs :func:`~realtime_erc.training.text_finetune.
finetune_text_encoder` on CUDA for each planned adapter in priority order while its time budget
lasts, packing finished adapters into tar files under ``--out`` as it goes (a killed call keeps
what finished). The adapters are then scored on the CPU with the original float32 encoder
(``realtime-erc train --text-adapter``), as every other adapter is: the LoRA weights were fitted
against the rebuilt base, the features the models train on come from the real one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GROUP = 64
BASE_FILES = ("config.json", "modules.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.txt", "sentence_bert_config.json",
              "config_sentence_transformers.json", "1_Pooling/config.json")  # fmt: skip
PROBE_TEXTS = ("Oh my God, I can't believe you did that!", "Okay.", "I'm so sorry to hear it.",
               "Get out of my apartment right now!", "We won! We actually won!")  # fmt: skip

# name, corpus, options; in priority order (the budget may end the list early). Recorded head
# valid weighted F1 of the CPU-trained all-layer adapters without context, to beat: MELD 60.5,
# IEMOCAP 52.1.
PLAN: tuple[tuple[str, str, dict], ...] = (
    ("text_adapter_meld7_mpnet12_ctx2", "meld", {"context_turns": 2, "epochs": 4}),
    ("text_adapter_iemocap6_mpnet12_ctx2", "iemocap", {"context_turns": 2, "epochs": 4}),
    ("text_adapter_iemocap6_mpnet12_ctx2_fold0of2", "iemocap",
     {"context_turns": 2, "epochs": 4, "folds": 2, "fold": 0}),
    ("text_adapter_iemocap6_mpnet12_ctx2_fold1of2", "iemocap",
     {"context_turns": 2, "epochs": 4, "folds": 2, "fold": 1}),
    ("text_adapter_meld7_mpnet12_ctx4", "meld", {"context_turns": 4, "epochs": 4}),
    ("text_adapter_meld7_mpnet12_ctx2_fold0of2", "meld",
     {"context_turns": 2, "epochs": 4, "folds": 2, "fold": 0}),
    ("text_adapter_meld7_mpnet12_ctx2_fold1of2", "meld",
     {"context_turns": 2, "epochs": 4, "folds": 2, "fold": 1}),
)  # fmt: skip


def quantize(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """int8 values and a float16 absmax scale per group of ``GROUP`` along the last axis."""
    g = t.float().reshape(-1, GROUP)
    scale = g.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
    q = torch.round(g / scale).clamp(-127, 127).to(torch.int8)
    return {"q": q, "scale": scale.half(), "shape": torch.tensor(t.shape)}


def dequantize(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return (d["q"].float() * d["scale"].float()).reshape(d["shape"].tolist())


def _corpora(data_dir: Path) -> dict:
    from realtime_erc.training.datasets import load_text_corpus

    out = {}
    for name in ("meld", "iemocap"):
        c = load_text_corpus(name, data_dir)
        out[name] = {
            "name": c.name, "label_set": c.label_set, "labels": list(c.labels),
            "provenance": c.provenance,
            "splits": {s: [{"id": d.id, "speakers": list(d.speakers), "labels": list(d.labels),
                            "texts": list(d.texts)} for d in ds] for s, ds in c.splits.items()},
        }  # fmt: skip
    return out


def pack(out: Path, data_dir: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from realtime_erc.features.assets import mpnet_model_dir
    from realtime_erc.features.text import TEXT_ENCODERS, load_sentence_encoder, turn_context

    base = mpnet_model_dir()
    corpora = _corpora(data_dir)
    tok = AutoTokenizer.from_pretrained(str(base))
    used: set[int] = set(tok.all_special_ids)
    for c in corpora.values():
        for ds in c["splits"].values():
            for d in ds:
                texts = d["texts"]
                ctx = [turn_context(texts, d["speakers"], i, 4) for i in range(len(texts))]
                for ids in tok(texts + ctx)["input_ids"]:
                    used.update(ids)
    state = load_file(str(base / "model.safetensors"))
    parts: list[dict] = [{}, {}]
    sizes = [0, 0]
    for key in sorted(state, key=lambda k: -state[k].numel()):
        t = state[key]
        if key.endswith("word_embeddings.weight"):
            rows = torch.tensor(sorted(used))
            entry = {"rows": rows, "vocab": torch.tensor(t.shape[0]), **quantize(t[rows])}
        elif t.dim() == 2 and t.shape[-1] % GROUP == 0 and t.numel() >= 65536:
            entry = quantize(t)
        else:
            entry = {"raw": t.half() if t.is_floating_point() else t}
        n = sum(v.numel() * v.element_size() for v in entry.values())
        k = int(sizes[1] < sizes[0])
        parts[k][key] = entry
        sizes[k] += n
    for k, name in enumerate("ab"):
        (out / name).mkdir(parents=True, exist_ok=True)
        torch.save(parts[k], out / name / f"weights_{name}.pt")
    (out / "data").mkdir(parents=True, exist_ok=True)
    for f in BASE_FILES:
        (out / "data" / "base" / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / f, out / "data" / "base" / f)
    (out / "data" / "corpora.json").write_text(json.dumps(corpora))
    model = load_sentence_encoder("cpu", 128, spec=TEXT_ENCODERS["mpnet"])
    ref = model.encode(list(PROBE_TEXTS), convert_to_numpy=True)
    np.save(out / "data" / "probe.npy", ref)
    print(f"packed {len(used)} of {state['embeddings.word_embeddings.weight'].shape[0]} "
          f"vocabulary rows; parts {sizes[0] / 1e6:.1f} MB + {sizes[1] / 1e6:.1f} MB")  # fmt: skip


def rebuild(pack_dir: Path, data: Path, target: Path) -> None:
    from safetensors.torch import save_file

    state = {}
    for f in sorted(pack_dir.glob("weights_*.pt")):
        for key, e in torch.load(f, weights_only=True).items():
            if "raw" in e:
                state[key] = e["raw"].float()
            elif "rows" in e:
                full = torch.zeros(int(e["vocab"]), int(e["shape"][1]))
                full[e["rows"]] = dequantize(e)
                state[key] = full
            else:
                state[key] = dequantize(e)
    shutil.copytree(data / "base", target, dirs_exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target / "model.safetensors"))


def train(
    pack_dir: Path, data: Path, out: Path, budget_s: float, only: list[str],
    device: str = "cuda", subset: int | None = None, work: Path = Path("/tmp/gpu-work"),
) -> None:  # fmt: skip
    from realtime_erc.features.assets import cache_root
    from realtime_erc.features.text import TEXT_ENCODERS, load_sentence_encoder
    from realtime_erc.training.corpus import Dialogue, ErcCorpus
    from realtime_erc.training.text_finetune import TextFinetuneOptions, finetune_text_encoder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()
    rebuild(pack_dir, data, cache_root() / "all-mpnet-base-v2")
    model = load_sentence_encoder("cpu", 128, spec=TEXT_ENCODERS["mpnet"])
    got = model.encode(list(PROBE_TEXTS), convert_to_numpy=True)
    ref = np.load(data / "probe.npy")
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"rebuilt encoder vs float32 reference: cosine min {cos.min():.5f}", flush=True)
    del model
    corpora = {}
    for name, c in json.loads((data / "corpora.json").read_text()).items():
        splits = {s: [Dialogue(d["id"], tuple(d["speakers"]), tuple(d["labels"]),
                               tuple(d["texts"])) for d in ds]
                  for s, ds in c["splits"].items()}  # fmt: skip
        corpora[name] = ErcCorpus(c["name"], c["label_set"], tuple(c["labels"]), splits,
                                  c["provenance"])  # fmt: skip
    summary = []
    done: list[Path] = []
    longest = 0.0
    for name, corpus, opts in PLAN:
        if only and name not in only:
            continue
        left = budget_s - (time.perf_counter() - start)
        if left < longest * (1.3 if corpus == "meld" else 0.7):
            print(f"skipping {name}: {left:.0f} s left", flush=True)
            continue
        t0 = time.perf_counter()
        options = TextFinetuneOptions(encoder="mpnet", device=device, subset=subset, **opts)
        path = work / "adapters" / f"{name}.pt"  # not under out: it returns 8 files at most
        info = finetune_text_encoder(corpora[corpus], path, work / name, options)
        seconds = time.perf_counter() - t0
        longest = max(longest, seconds)
        summary.append({"name": name, "seconds": round(seconds, 1), "valid": info["valid"]})
        print(json.dumps(summary[-1]), flush=True)
        done.append(path)
        # two adapters per tar (under the 16 MB a returned file may have)
        k = (len(done) - 1) // 2
        with tarfile.open(out / f"adapters_{k}.tar", "w") as tar:
            for p in done[2 * k : 2 * k + 2]:
                tar.add(p, arcname=p.name)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    p.add_argument("--data", type=Path, default=Path(os.environ.get("REALTIME_ERC_DATA",
                                                                    "../shared/data")))  # fmt: skip
    t = sub.add_parser("train")
    t.add_argument("--pack", type=Path, required=True)
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--budget-s", type=float, default=420.0)
    t.add_argument("--only", nargs="*", default=[])
    t.add_argument("--device", default="cuda")
    t.add_argument("--subset", type=int, default=None, help="dialogues per split (smoke runs)")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.out, args.data)
    else:
        train(args.pack, args.data, args.out, args.budget_s, args.only, args.device, args.subset)


if __name__ == "__main__":
    main()
