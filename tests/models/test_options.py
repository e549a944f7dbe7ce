"""Model hyperparameters: one validator (pydantic, frozen, strict, unknown keys refused) and one
error format, :class:`ModelConfigError` naming the key."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest

from realtime_erc.models.options import ModelConfigError, config_from_dict, load_model_config


def test_overrides_are_typed_and_an_int_serves_as_a_float():
    config = load_model_config("bigfusion", overrides=["hidden=64", "lif_tau=3"])
    assert config.hidden == 64 and config.lif_tau == 3.0 and isinstance(config.lif_tau, float)
    with pytest.raises(FrozenInstanceError):
        config.hidden = 32


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hiden=3", "overrides: unknown key 'hiden' for model 'bigfusion' (known keys: hidden,"),
        ("hidden=true", "overrides: bigfusion.hidden must be int (like the default 128), got True"),
        ("hidden=abc", "bigfusion.hidden must be int (like the default 128), got 'abc'"),
        ("dropout=x", "bigfusion.dropout must be float (like the default 0.1), got 'x'"),
        ("global_importance=degree", "bigfusion.global_importance: input should be"),
        ("horizon=0", "bigfusion.horizon: input should be greater than or equal to 1, got 0"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ModelConfigError) as e:
        load_model_config("bigfusion", overrides=[override])
    assert message in str(e.value)


def test_checkpoint_configs_are_checked_the_same_way():
    with pytest.raises(ModelConfigError, match=r"checkpoint x: dfgcn.window must be int"):
        config_from_dict("dfgcn", {"window": 2.5}, source="checkpoint x")
