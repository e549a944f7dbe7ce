"""Whisper's audio encoder in PyTorch, with the weights of the packaged CTranslate2 model.

CTranslate2 hands back only the encoder's last layer, and emotion is heard better in the
middle ones (on RAVDESS actors the speech head never trained on, mean and standard deviation
of the first block's states beat the last layer's: see docs/SESSIONS.md, seventh pass).
:func:`read_ctranslate2` reads a ``model.bin`` (CTranslate2's binary format, version 6) and
:class:`WhisperEncoder` runs the same network (float32; within 1e-4 of CTranslate2 in float32)
returning every layer's states::

    h_0 = GELU(conv2(GELU(conv1(mel)))) + P          mel [B, mels, T] → [B, T/2, d]
    h_i = Block_i(h_{i-1})                             i = 1 … L (pre-LayerNorm transformer)
    h_{L+1} = LayerNorm(h_L)                           what CTranslate2's ``encode`` returns

``Block(x) = x' + MLP(LN(x'))`` with ``x' = x + Attention(LN(x))`` (``heads`` heads, fused
query/key/value projection, GELU MLP of width 4 d).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from realtime_erc.errors import UserError

_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16)


class EncoderWeightsError(UserError, ValueError):
    """The CTranslate2 model cannot be read as a Whisper encoder; the message says what to do."""


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """The named variables of a CTranslate2 ``model.bin`` (binary version 6), aliases resolved."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        pos += n
        return data[pos - n : pos - 1].decode()

    if take("I") != 6:
        raise EncoderWeightsError(f"{path}: not a CTranslate2 model of binary version 6")
    string(), take("I")  # spec name and revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = _DTYPES[take("B")]
        size = take("I")
        variables[name] = np.frombuffer(data, dtype, size // np.dtype(dtype).itemsize, pos)
        variables[name] = variables[name].reshape(shape)
        pos += size
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return variables


class EncoderBlock(nn.Module):
    """``forward(x [B, T, d]) -> [B, T, d]``: pre-LayerNorm self-attention, then the MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.out(attended)
        return x + self.mlp(self.mlp_norm(x))


class WhisperEncoder(nn.Module):
    """``forward(mel [B, mels, T]) -> [h_0 … h_{L+1}]``, each ``[B, ⌈T/2⌉, width]`` (module doc)."""

    def __init__(
        self, width: int, heads: int, layers: int, mels: int = 80, positions: int = 1500
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(mels, width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(positions, width))
        self.blocks = nn.ModuleList(EncoderBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, mel: Tensor, depth: int | None = None) -> list[Tensor]:
        """``[h_0 … h_depth]`` (``depth`` None: all ``L + 2``; the rest is not computed)."""
        depth = len(self.blocks) + 1 if depth is None else depth
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        states = [x + self.positions[: x.shape[1]]]
        for block in self.blocks[:depth]:
            states.append(block(states[-1]))
        if depth > len(self.blocks):
            states.append(self.norm(states[-1]))
        return states

    @classmethod
    def from_ctranslate2(cls, model_dir: Path) -> WhisperEncoder:
        """The encoder of the CTranslate2 Whisper model in ``model_dir`` (float32, eval mode)."""
        v = read_ctranslate2(Path(model_dir) / "model.bin")
        try:
            width = v["encoder/conv1/bias"].shape[0]
            layers = sum(1 for k in v if k.endswith("self_attention/linear_0/weight")
                         and k.startswith("encoder/"))  # fmt: skip
            mels = v["encoder/conv1/weight"].shape[1]
            encoder = cls(width, int(v["encoder/num_heads"]), layers, mels)
            names = {
                **_linear("conv1", "conv1"),
                **_linear("conv2", "conv2"),
                "positions": "position_encodings/encodings",
                **_norm("norm", "layer_norm"),
            }
            for i in range(layers):
                ours, theirs = f"blocks.{i}.", f"layer_{i}/"
                names |= _norm(ours + "attention_norm", theirs + "self_attention/layer_norm")
                names |= _linear(ours + "qkv", theirs + "self_attention/linear_0")
                names |= _linear(ours + "out", theirs + "self_attention/linear_1")
                names |= _norm(ours + "mlp_norm", theirs + "ffn/layer_norm")
                names |= _linear(ours + "mlp.0", theirs + "ffn/linear_0")
                names |= _linear(ours + "mlp.2", theirs + "ffn/linear_1")
            state = {
                ours: torch.from_numpy(v[f"encoder/{theirs}"].astype(np.float32))
                for ours, theirs in names.items()
            }
            encoder.load_state_dict(state)
        except (KeyError, RuntimeError) as e:
            raise EncoderWeightsError(
                f"{model_dir}: not a Whisper model CTranslate2 can read as an encoder ({e}); "
                "reinstall the package that ships it (see realtime_erc/features/assets.py)"
            ) from None
        return encoder.eval()


def _linear(ours: str, theirs: str) -> dict[str, str]:
    return {f"{ours}.weight": f"{theirs}/weight", f"{ours}.bias": f"{theirs}/bias"}


def _norm(ours: str, theirs: str) -> dict[str, str]:
    return {f"{ours}.weight": f"{theirs}/gamma", f"{ours}.bias": f"{theirs}/beta"}
