"""Generate ``recordings/demo``: a short, licence-clean two-speaker session with ground truth.

The dialogue is original text written for this project. It is voiced by espeak-ng with two
distinct voices and per-emotion prosody (speed, pitch, amplitude), and paired with a small video
track (a coloured panel showing who is talking). Deterministic: running it again reproduces the
same audio, video frames and annotations.

    python scripts/make_demo.py recordings/demo
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime_erc.events import SAMPLE_RATE  # noqa: E402
from realtime_erc.sources.recording import (  # noqa: E402
    ANNOTATIONS_FILE,
    SESSION_FILE,
    TIMES_FILE,
    Annotation,
    RecordingWriter,
    Speaker,
)
from realtime_erc.training.dev_sessions import espeak  # noqa: E402

log = logging.getLogger("make_demo")

SEED = 20261122
FPS = 10.0
FRAME_SIZE = (160, 120)  # width, height
NOISE_DBFS = -60.0
LEAD_IN_S = 0.6
TAIL_S = 1.0
GAP_S = (0.8, 1.5)
AMPLITUDE_SCALE = 0.55
PEAK = 0.9

# id -> (name, espeak-ng voice, base pitch, panel colour BGR)
VOICES: dict[str, tuple[str, str, int, tuple[int, int, int]]] = {
    "A": ("Ana", "en-us+f3", 55, (40, 110, 230)),
    "B": ("Ben", "en-gb+m3", 40, (200, 120, 30)),
}

# emotion -> (words per minute, pitch offset, amplitude); espeak-ng saturates above ~120, so
# amplitudes are scaled by AMPLITUDE_SCALE and the mix is normalised to PEAK afterwards.
PROSODY: dict[str, tuple[int, int, int]] = {
    "neutral": (155, 0, 100),
    "joy": (175, 18, 130),
    "surprise": (170, 30, 140),
    "anger": (175, 5, 190),
    "sadness": (120, -20, 70),
    "fear": (190, 22, 85),
    "disgust": (130, -15, 115),
}


@dataclass(frozen=True)
class Line:
    speaker: str
    emotion: str
    text: str


# Original dialogue (CC0): plain, common words so speech recognition transcribes it well.
DIALOGUE: tuple[Line, ...] = (
    Line("A", "neutral", "Good morning. I made some coffee for both of us."),
    Line("B", "joy", "Thank you so much. This coffee smells wonderful."),
    Line("A", "neutral", "The meeting with the new team starts after lunch."),
    Line("B", "surprise", "Wait, the meeting is so soon? I thought it was next week!"),
    Line("A", "neutral", "No, they moved it. I sent you a message last night."),
    Line("B", "fear", "Oh no. My notes need more work. What if they ask me hard questions?"),
    Line("A", "joy", "You will be great. You know this project better than anyone."),
    Line("B", "sadness", "I am just so tired lately. Everything feels heavy."),
    Line("A", "sadness", "I am sorry to hear that. You should take a few days off."),
    Line("B", "anger", "How can I rest? The work never stops, not even for one hour!"),
    Line("A", "surprise", "Really? You never told me that!"),
    Line("B", "disgust", "And the kitchen on our floor is dirty again. It smells really bad."),
    Line("A", "disgust", "I saw it. Someone left old food in the sink for days."),
    Line("A", "anger", "This makes me angry. I will talk to the manager myself!"),
    Line("B", "fear", "Please be careful. I do not want to lose this job."),
    Line("A", "neutral", "Relax. I will keep it calm and simple."),
    Line("B", "joy", "Thank you. I feel much better now. Let us go to the meeting."),
)


def synthesize(line: Line, workdir: Path, index: int) -> np.ndarray:
    """Voice one line with espeak-ng; return trimmed ``[n]`` float32 at 16 kHz."""
    _, voice, base_pitch, _ = VOICES[line.speaker]
    speed, pitch_offset, amplitude = PROSODY[line.emotion]
    audio = espeak(line.text, voice, speed, base_pitch + pitch_offset,
                   round(amplitude * AMPLITUDE_SCALE), workdir / f"{index:02d}.wav")  # fmt: skip
    if audio.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {line.text!r}")
    return audio


def panel(speaker: str | None) -> np.ndarray:
    """One ``[H, W, 3]`` BGR video frame: the speaker's colour and initial, grey when silent."""
    width, height = FRAME_SIZE
    if speaker is None:
        return np.full((height, width, 3), 60, np.uint8)
    name, _, _, colour = VOICES[speaker]
    image = np.full((height, width, 3), colour, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), _ = cv2.getTextSize(name[0], font, 3.0, 6)
    cv2.putText(image, name[0], ((width - tw) // 2, (height + th) // 2), font, 3.0,
                (255, 255, 255), 6, cv2.LINE_AA)  # fmt: skip
    return image


def build(out: Path) -> None:
    """Synthesize the dialogue and write the recording into ``out`` (replacing a previous one)."""
    rng = np.random.default_rng(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        clips = [synthesize(line, Path(tmp), i) for i, line in enumerate(DIALOGUE)]

    for line, clip in zip(DIALOGUE, clips, strict=True):
        seconds = len(clip) / SAMPLE_RATE
        if not 1.5 <= seconds <= 5.0:
            raise RuntimeError(f"{line.text!r} lasts {seconds:.2f} s; keep each line 1.5-5 s")

    # Lay the clips out on the session clock with random gaps.
    starts: list[int] = []
    cursor = round(LEAD_IN_S * SAMPLE_RATE)
    for clip in clips:
        starts.append(cursor)
        cursor += len(clip) + round(rng.uniform(*GAP_S) * SAMPLE_RATE)
    total = starts[-1] + len(clips[-1]) + round(TAIL_S * SAMPLE_RATE)
    speech = np.zeros(total, np.float32)
    for start, clip in zip(starts, clips, strict=True):
        speech[start : start + len(clip)] = clip
    speech *= PEAK / float(np.max(np.abs(speech)))
    noise = rng.standard_normal(total) * 10 ** (NOISE_DBFS / 20)
    audio = (speech + noise).astype(np.float32)

    for name in (SESSION_FILE, "audio.flac", "video.mp4", TIMES_FILE, ANNOTATIONS_FILE):
        (out / name).unlink(missing_ok=True)
    source = (
        "Synthetic demo generated by scripts/make_demo.py: an original scripted dialogue "
        f"(text written for realtime-erc, CC0) voiced by espeak-ng ({VOICES['A'][1]} for Ana, "
        f"{VOICES['B'][1]} for Ben) with per-emotion speed/pitch/amplitude, plus "
        f"{NOISE_DBFS:.0f} dBFS noise; video is a coloured panel marking the active speaker. "
        "Content licence: CC0 / Apache-2.0."
    )
    speakers = [Speaker(sid, v[0]) for sid, v in VOICES.items()]
    with RecordingWriter(
        out, "demo-01", fps=FPS, speakers=speakers, label_set="meld7", source=source,
        created="2026-11-22T10:00:00Z",
    ) as writer:  # fmt: skip
        block = SAMPLE_RATE // 2
        for i in range(0, total, block):
            writer.write_audio(audio[i : i + block])
        n_frames = int(total / SAMPLE_RATE * FPS) + 1
        for i in range(n_frames):
            sample = round(i / FPS * SAMPLE_RATE)
            talking = next(
                (
                    line.speaker
                    for line, s, c in zip(DIALOGUE, starts, clips, strict=True)
                    if s <= sample < s + len(c)
                ),
                None,
            )
            writer.write_frame(panel(talking), i / FPS)
        for i, (line, start, clip) in enumerate(zip(DIALOGUE, starts, clips, strict=True)):
            writer.write_annotation(
                Annotation(
                    utterance_id=i,
                    speaker=line.speaker,
                    start=round(start / SAMPLE_RATE, 3),
                    end=round((start + len(clip)) / SAMPLE_RATE, 3),
                    text=line.text,
                    emotion=line.emotion,
                )
            )
    size = sum(p.stat().st_size for p in out.iterdir())
    log.info("wrote %s: %.1f s, %d utterances, %d frames, %.2f MB",
             out, total / SAMPLE_RATE, len(clips), n_frames, size / 1e6)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("recordings/demo"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: install it (apt-get install espeak-ng) and run again")
    build(args.out)


if __name__ == "__main__":
    main()
