"""Global information vector (GIV) → prompt, the conditioning signal of DF-GCN's dynamic fusion.

Maths (interpretation of Meng et al. 2026; the authors' code takes the mean over the *whole*
dialogue, which leaks the future into every utterance):

    GIV_t = mean(f_0 … f_t)            causal: a running mean over the dialogue so far
    GIV_t = mean(f_0 … f_{L-1})        bidirectional (offline) mode
    p_t   = W_2 GELU(W_1 GIV_t + b_1) + b_2

``f``: ``[N, H]`` static (presence-masked mean) fusion of an utterance's modalities; ``p``:
``[N, P]``. The running mean is O(1) per streaming step (:class:`RunningMean`), so the GIV needs
no horizon. Nothing on this path is detached: the prompt MLP learns through the fusion it drives.
"""

from __future__ import annotations

from torch import Tensor, nn

from realtime_erc.conversation.context import causal_running_mean


def global_information(x: Tensor, mask: Tensor, causal: bool) -> Tensor:
    """``x``: ``[B, L, H]``, ``mask``: ``[B, L]`` → GIV ``[B, L, H]`` (causal running mean, or the
    dialogue mean repeated at every position)."""
    if causal:
        return causal_running_mean(x, mask)
    m = mask.unsqueeze(-1).to(x.dtype)
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1.0)
    return mean.expand_as(x)


class GIVPrompt(nn.Module):
    """The prompt MLP: GIV ``[*, H]`` → prompt ``[*, P]``."""

    def __init__(self, hidden: int, prompt_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, prompt_dim)
        )

    def reset_parameters(self) -> None:
        self.mlp[0].reset_parameters()
        self.mlp[2].reset_parameters()

    def forward(self, giv: Tensor) -> Tensor:
        return self.mlp(giv)
