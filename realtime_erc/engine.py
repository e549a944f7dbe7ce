"""The inference engine: a model (from a checkpoint) on the best device, one streaming state per
session, and micro-batching of concurrent sessions' steps.

- :func:`pick_device` — ``"auto"``: CUDA when ``torch.cuda.is_available()`` and it initialises,
  else the CPU (a CUDA failure falls back to the CPU with a warning); ``"cpu"`` / ``"cuda"`` /
  ``"cuda:N"`` explicitly (an unavailable CUDA device is an :class:`EngineError`).
- :class:`Engine` — ``step(session_id, utterance) → EmotionPrediction`` under
  ``torch.inference_mode``; ``step_many([(session_id, utterance), ...])`` runs one step per
  session as a single batch when the model's ``step_many`` batches (``model.batched_step``:
  ``utterance-mlp``, ``dialoguegcn``), as a loop otherwise. Several utterances of the same
  session in one call run in arrival order (successive rounds).
- :class:`AsyncEngine` — ``await step(...)`` from the event loop: requests arriving within
  ``window_s`` (2 ms) are coalesced into one ``step_many`` that runs on a worker thread, one batch
  at a time, so each session's utterances keep their order.

Pipeline concerns (events in and out, latency fields) belong to the stage that uses the engine.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from realtime_erc.batching import MicroBatcher
from realtime_erc.errors import UserError
from realtime_erc.events import UtteranceFeatures
from realtime_erc.models.base import ConversationState, ERCModel
from realtime_erc.models.checkpoint import CheckpointInfo, load_checkpoint, model_info

log = logging.getLogger(__name__)


class EngineError(UserError, RuntimeError):
    """The engine cannot run as asked (e.g. a CUDA device that is not there)."""


@dataclass(frozen=True)
class EmotionPrediction:
    """``label``: the arg-max class; ``scores``: softmax probability per label, in the model's
    label order (sums to 1); ``logits``: the raw ``[C]`` outputs."""

    label: str
    scores: dict[str, float]
    logits: tuple[float, ...]


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """The device to run on (see module docstring)."""
    name = str(device)
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto" or name.startswith("cuda"):
        if torch.cuda.is_available():
            target = torch.device("cuda" if name == "auto" else name)
            try:
                torch.zeros(1, device=target)  # CUDA initialises lazily: force it here
                return target
            except (RuntimeError, AssertionError) as e:
                if name != "auto":
                    raise EngineError(f"CUDA device {name} failed to start ({e}): use cpu") from e
                log.warning("CUDA is available but failed to initialise (%s); using the CPU", e)
        elif name != "auto":
            raise EngineError(
                f"device {name!r} requested but CUDA is not available here: use auto or cpu"
            )
        return torch.device("cpu")
    raise EngineError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")


class Engine:
    """A model with per-session streaming state (thread-safe: steps are serialised)."""

    def __init__(self, model: ERCModel | Path | str, device: str | torch.device = "auto") -> None:
        self.device = pick_device(device)
        if isinstance(model, ERCModel):
            self.model = model.to(self.device).eval()
        else:
            self.model = load_checkpoint(model, self.device)
        self.info: CheckpointInfo = model_info(self.model)
        self._states: dict[str, ConversationState] = {}
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """``name/label_set@hash8`` (the stream's ``model`` field)."""
        return self.info.model_id

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.labels

    @property
    def label_set(self) -> str:
        return self.model.label_set

    @property
    def sessions(self) -> list[str]:
        return list(self._states)

    def end_session(self, session_id: str) -> None:
        """Forget a session's state (its next utterance starts a new conversation)."""
        with self._lock:
            self._states.pop(session_id, None)

    def step(self, session_id: str, utterance: UtteranceFeatures) -> EmotionPrediction:
        return self.step_many([(session_id, utterance)])[0]

    def step_many(self, items: Sequence[tuple[str, UtteranceFeatures]]) -> list[EmotionPrediction]:
        """One prediction per ``(session_id, utterance)``, in order. Features are checked
        (``FeatureDimError``) before any session's state changes."""
        for _, utt in items:
            self.model.dims.check(utt)
        results: list[EmotionPrediction | None] = [None] * len(items)
        with self._lock, torch.inference_mode():
            for round_ in _rounds(items):
                states = [self._state(items[i][0]) for i in round_]
                logits, states = self.model.step_many(states, [items[i][1] for i in round_])
                for i, state, pred in zip(round_, states, self._predictions(logits), strict=True):
                    self._states[items[i][0]] = state
                    self._stepped(*items[i], state)
                    results[i] = pred
        return results  # type: ignore[return-value]

    def _stepped(self, session_id: str, utt: UtteranceFeatures, state: ConversationState) -> None:
        """``utt`` went into the session's state (under the lock)."""

    def _state(self, session_id: str) -> ConversationState:
        state = self._states.get(session_id)
        if state is None:
            state = self._states[session_id] = self.model.init_state()
        return state

    def _predictions(self, logits: torch.Tensor) -> list[EmotionPrediction]:
        """``logits``: ``[S, C]`` → one prediction per row."""
        probs = torch.softmax(logits.float(), -1).cpu().tolist()
        raw = logits.float().cpu().tolist()
        labels = self.model.labels
        out = []
        for p, r in zip(probs, raw, strict=True):
            best = max(range(len(p)), key=p.__getitem__)
            out.append(EmotionPrediction(labels[best], dict(zip(labels, p, strict=True)), tuple(r)))
        return out


@dataclass(frozen=True)
class Progress:
    """The last utterance whose event was published: its id and end (session seconds)."""

    utterance_id: int
    end: float


class ResumableEngine(Engine):
    """An engine whose sessions can be taken up again after the server that ran them was lost
    (``serve --ray``'s engine deployment). A step's state is kept until its event is published
    (:meth:`commit`); :meth:`resume` rolls a session back to its last published utterance, so
    an utterance stepped but never published is stepped again, not twice.

    A session neither stepped nor :meth:`touch`-ed for a while is forgotten by :meth:`expire`
    (a server that lost it never ends it)."""

    def __init__(self, model: ERCModel | Path | str, device: str | torch.device = "auto") -> None:
        super().__init__(model, device)
        self._pending: dict[str, dict[int, tuple[ConversationState, Progress]]] = {}
        self._committed: dict[str, tuple[ConversationState, Progress]] = {}
        self._seen: dict[str, float] = {}

    def _stepped(self, session_id: str, utt: UtteranceFeatures, state: ConversationState) -> None:
        # a copy: the model updates states in place
        snapshot = (copy.deepcopy(state), Progress(utt.utterance_id, utt.end))
        self._pending.setdefault(session_id, {})[utt.utterance_id] = snapshot
        self._seen[session_id] = time.monotonic()

    def commit(self, session_id: str, utterance_id: int) -> None:
        """The event of ``utterance_id`` was published: the session resumes after it."""
        with self._lock:
            pending = self._pending.get(session_id, {})
            if utterance_id in pending:
                self._committed[session_id] = pending[utterance_id]
            for k in [k for k in pending if k <= utterance_id]:
                del pending[k]

    def resume(self, session_id: str) -> Progress | None:
        """Roll the session back to its last published utterance; where it goes on from (None:
        nothing was published, it starts afresh)."""
        with self._lock:
            self._pending.pop(session_id, None)
            committed = self._committed.get(session_id)
            if committed is None:
                self._states.pop(session_id, None)
                return None
            self._states[session_id] = copy.deepcopy(committed[0])
            self._seen[session_id] = time.monotonic()
            return committed[1]

    def end_session(self, session_id: str) -> None:
        with self._lock:
            for kept in (self._states, self._pending, self._committed, self._seen):
                kept.pop(session_id, None)

    def touch(self, session_ids: Sequence[str]) -> None:
        """The sessions are still open (see :meth:`expire`)."""
        now = time.monotonic()
        with self._lock:
            for sid in session_ids:
                if sid in self._seen:
                    self._seen[sid] = now

    def expire(self, idle_s: float) -> list[str]:
        """End the sessions neither stepped nor touched for ``idle_s`` seconds; their ids."""
        cutoff = time.monotonic() - idle_s
        with self._lock:
            gone = [sid for sid, seen in self._seen.items() if seen < cutoff]
        for sid in gone:
            self.end_session(sid)
        return gone


def _rounds(items: Sequence[tuple[str, UtteranceFeatures]]) -> list[list[int]]:
    """Split item indices into rounds with at most one item per session, keeping each session's
    order (its k-th item goes to round k)."""
    seen: dict[str, int] = {}
    rounds: list[list[int]] = []
    for i, (sid, _) in enumerate(items):
        k = seen.get(sid, 0)
        seen[sid] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(i)
    return rounds


class AsyncEngine:
    """Coalesces concurrent ``await step(...)`` calls into micro-batches run off the event loop
    (a :class:`~realtime_erc.batching.MicroBatcher` over :meth:`Engine.step_many`).

    ``window_s``: how long the first request of a batch waits for others; ``max_batch``: the most
    steps in one batch; ``on_batch``: told each batch's size. Use as
    ``async with AsyncEngine(engine) as ae: await ae.step(...)``.
    """

    def __init__(
        self,
        engine: Engine,
        window_s: float = 0.002,
        max_batch: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self._batcher: MicroBatcher[tuple[str, UtteranceFeatures], EmotionPrediction] = (
            MicroBatcher(engine.step_many, window_s, max_batch, on_batch)
        )

    @property
    def batches(self) -> int:
        """Micro-batches run so far."""
        return self._batcher.batches

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def step(self, session_id: str, utterance: UtteranceFeatures) -> EmotionPrediction:
        return await self._batcher.submit((session_id, utterance))

    async def close(self) -> None:
        await self._batcher.close()
