"""Dataset names parse once into a typed DatasetSpec: every name in use round-trips, bad names
are refused naming the bad part and the valid choices."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from realtime_erc.training.dataset_spec import (
    CORPORA,
    ENCODERS,
    TEXT_CORPORA,
    DatasetSpec,
)
from realtime_erc.training.emotion_data import DataError

ROOT = Path(__file__).resolve().parents[2]


def _names_in_use() -> set[str]:
    from realtime_erc.training.results import DATASET_TITLES, ResultsPlan

    names = set(DATASET_TITLES) | {str(d) for d in ResultsPlan().datasets}
    ledger = ROOT / "docs" / "results" / "runs.jsonl"
    if ledger.is_file():
        names |= {json.loads(line)["dataset"] for line in ledger.read_text().splitlines() if line}
    return names | {"emorynlp", "meld+mpnet", "meld+lora", "assembled+heads+causal",
                    "assembled+mpnet+lora4+heads+causal", "emorynlp+mpnet+ctx+xfit"}  # fmt: skip


def test_every_name_in_use_round_trips() -> None:
    names = _names_in_use()
    assert len(names) > 20
    for name in sorted(names):
        spec = DatasetSpec.parse(name)
        assert str(spec) == name
        assert DatasetSpec.parse(str(spec)) == spec
        assert spec.corpus in CORPORA


def test_the_fields_say_what_the_name_says() -> None:
    spec = DatasetSpec.parse("meld+mpnet+lora4+xfit")
    assert spec == DatasetSpec("meld", encoder="mpnet", adapter="lora", lora_layers=4,
                               crossfit=True)  # fmt: skip
    assert spec.is_text and not spec.heads and spec.stem == "meld+mpnet+lora4+xfit"
    assert DatasetSpec.parse("iemocap") == DatasetSpec("iemocap")
    assert DatasetSpec.parse("iemocap+ctx").adapter == "ctx"
    assembled = DatasetSpec.parse("assembled+lora+heads+causal")
    assert (assembled.adapter, assembled.lora_layers, assembled.heads, assembled.causal) == (
        "lora", None, True, True)  # fmt: skip
    assert not assembled.is_text
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.corpus = "iemocap"  # type: ignore[misc]
    assert DatasetSpec.parse(spec) is spec  # a spec passes through


def test_variants_in_any_order_give_the_canonical_name() -> None:
    assert str(DatasetSpec.parse("meld+xfit+lora4+mpnet")) == "meld+mpnet+lora4+xfit"
    assert str(DatasetSpec.parse("assembled+causal+heads+lora")) == "assembled+lora+heads+causal"


def test_a_feature_pickle_is_a_spec_named_by_its_path(tmp_path: Path) -> None:
    from realtime_erc.training.erc_trainer import ErcTrainOptions, run_name

    spec = DatasetSpec.parse("published/iemocap_features.pkl")
    assert (spec.corpus, spec.pickle, spec.stem) == (None, "published/iemocap_features.pkl",
                                                     "iemocap_features")  # fmt: skip
    assert str(spec) == "published/iemocap_features.pkl"
    options = ErcTrainOptions("dialoguegcn")
    assert run_name(spec, options) == "iemocap_features-dialoguegcn-causal-seed0"
    plain = tmp_path / "features"  # an existing file without the suffix is a pickle too
    plain.write_bytes(b"")
    assert DatasetSpec.parse(str(plain)).pickle == str(plain)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("friends", "unknown dataset 'friends': choose iemocap, meld, emorynlp, assembled or a "
                    "published feature .pkl"),
        ("meld+heads", "unknown dataset variant '+heads' in 'meld+heads': meld takes +mpnet, "
                       "+lora, +ctx, +xfit"),
        ("assembled+ctx", "unknown dataset variant '+ctx' in 'assembled+ctx': assembled takes "
                          "+mpnet, +lora, +heads, +causal"),
        ("meld+minilm", "unknown dataset variant '+minilm'"),  # the default is not named
        ("meld+", "unknown dataset variant '+' in 'meld+'"),
        ("assembled+heads+heads", "'assembled+heads+heads' has +heads twice: assembled takes"),
        ("meld+lora4+lora", "has +lora twice"),
        ("meld+lora0", "'+lora0' in 'meld+lora0': K in +loraK is a layer count >= 1"),
        ("meld+lora04", "K in +loraK is a layer count"),
        ("meld+lora+ctx", "give +lora or +ctx, not both"),
        ("assembled+causal", "assembled+causal: +causal (running speaker standardisation) "
                             "needs +heads"),
    ],
)  # fmt: skip
def test_bad_names_are_refused_naming_the_bad_part_and_the_choices(name: str, message: str):
    with pytest.raises(DataError) as e:
        DatasetSpec.parse(name)
    assert message in str(e.value)


def test_a_spec_is_consistent_by_construction() -> None:
    with pytest.raises(ValueError, match="either a corpus or a pickle"):
        DatasetSpec(None)
    with pytest.raises(ValueError, match="lora_layers is for a \\+lora adapter"):
        DatasetSpec("meld", adapter="ctx", lora_layers=4)


def test_the_grammar_knows_the_corpora_and_encoders_the_code_has() -> None:
    from realtime_erc.features.text import TEXT_ENCODERS
    from realtime_erc.training.datasets import TEXT_DATASETS

    assert tuple(TEXT_DATASETS) == TEXT_CORPORA
    assert tuple(TEXT_ENCODERS) == ENCODERS


def test_load_data_parses_the_name_once_and_the_data_carry_the_spec(tmp_path: Path) -> None:
    from realtime_erc.training.erc_trainer import load_data, resolve_data

    with pytest.raises(DataError, match="unknown dataset 'friends'"):
        load_data("friends", tmp_path)
    request = resolve_data("iemocap+mpnet")
    assert request.spec == DatasetSpec("iemocap", encoder="mpnet")
    assert request.name == "iemocap+mpnet" and not request.crossfit
    assert resolve_data(DatasetSpec("iemocap")).name == "iemocap"
