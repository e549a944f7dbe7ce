"""Speaker attribution: resemblyzer embeddings + online clustering on real voices."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from feature_media import espeak, ravdess_clips

from realtime_erc.bench.speakers import attribution_accuracy
from realtime_erc.speech.speakers import (
    EMBEDDING_DIM,
    SpeakerError,
    SpeakerOptions,
    SpeakerTracker,
    embed_voices,
    load_voice_encoder,
)

pytestmark = pytest.mark.slow

LINES = (
    "Good morning, I have some news about the project.",
    "The meeting was moved to Friday afternoon.",
    "I can't believe you forgot the tickets again.",
)
# the demo recording's two voices
ANA = {"voice": "en-us+f3", "pitch": 55}
BEN = {"voice": "en-gb+m3", "pitch": 40}


@pytest.fixture(scope="module")
def voices() -> dict[str, list[np.ndarray]]:
    return {
        "ana": [espeak(line, **ANA) for line in LINES],
        "ben": [espeak(line, **BEN) for line in LINES],
    }


def tracker(**kw) -> SpeakerTracker:
    t = SpeakerTracker(SpeakerOptions(**kw))
    t.load()
    return t


def test_embeddings_are_unit_vectors_and_silence_is_unattributed(voices) -> None:
    t = tracker()
    emb = t.embed(voices["ana"][0])
    assert emb is not None and emb.shape == (EMBEDDING_DIM,) and np.isfinite(emb).all()
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-4
    assert t.assign(np.zeros(32000, np.float32)).speaker is None
    assert t.assign(voices["ana"][0][:1600]).speaker is None  # 0.1 s < min_speech_s
    assert t.speakers == []


def test_a_batch_of_clips_embeds_as_each_alone(voices) -> None:
    """A server's concurrent utterances go through the LSTM as one batch: same embeddings."""
    t = tracker()
    clips = [voices["ana"][0], np.zeros(16000, np.float32), voices["ben"][1], voices["ana"][2]]
    together = embed_voices(load_voice_encoder(), clips, t.options.min_speech_s)
    alone = [t.embed(c) for c in clips]
    assert together[1] is None and alone[1] is None
    for a, b in zip(alone, together, strict=True):
        if a is not None:
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_two_espeak_voices_are_separated_and_each_voice_merged(voices) -> None:
    t = tracker()
    order = [("ana", 0), ("ben", 0), ("ana", 1), ("ben", 1), ("ben", 2), ("ana", 2)]
    got = [t.assign(voices[v][i]).speaker for v, i in order]
    assert got[0] != got[1]
    assert got == [got[0], got[1], got[0], got[1], got[1], got[0]]
    assert len(t.speakers) == 2 and all(s.count == 3 for s in t.speakers)


def test_two_ravdess_actors_are_separated_and_merged() -> None:
    male, female = ravdess_clips(actor=1, n=3), ravdess_clips(actor=2, n=3)
    t = tracker()
    clips = [("m", male[0]), ("f", female[0]), ("m", male[1]), ("f", female[1])]
    clips += [("m", male[2]), ("f", female[2])]
    got = [t.assign(x).speaker for _, x in clips]
    assert attribution_accuracy([a for a, _ in clips], got) == 1.0
    assert len(set(got)) == 2


def test_enrolment_names_the_speaker(voices, tmp_path) -> None:
    ref = tmp_path / "ben.wav"
    sf.write(ref, np.concatenate(voices["ben"][:2]), 16000)
    t = tracker(enrol={"Ben": str(ref)})
    assert [s.name for s in t.speakers] == ["Ben"] and t.speakers[0].enrolled
    assert t.assign(voices["ben"][2]).speaker == "Ben"
    assert t.assign(voices["ana"][0]).speaker == "S1"  # an unknown voice still opens a speaker


def test_enrolment_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(SpeakerError, match="missing.wav"):
        tracker(enrol={"X": str(tmp_path / "missing.wav")})
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.zeros(48000, np.float32), 16000)
    with pytest.raises(SpeakerError, match="too little speech"):
        tracker(enrol={"Q": str(quiet)})


def test_max_speakers_is_respected(voices) -> None:
    t = tracker(max_speakers=1)
    names = {t.assign(x).speaker for x in voices["ana"][:2] + voices["ben"][:2]}
    assert names == {"S1"} and len(t.speakers) == 1


def test_clustering_rule_on_fixed_embeddings() -> None:
    """``online``: new speaker iff all distances > threshold, else the nearest; centroids update."""
    t = SpeakerTracker(SpeakerOptions(method="online", threshold=0.3, max_speakers=2))
    e1, e2 = np.eye(EMBEDDING_DIM, dtype=np.float32)[:2]
    near1 = (e1 * 0.9 + e2 * 0.1) / np.linalg.norm([0.9, 0.1])  # distance ≈ 0.006 to e1
    mid = (e1 + e2) / np.sqrt(2)  # distance ≈ 0.29 to both
    assert t.assign_embedding(e1).new and t.assign_embedding(e1).speaker == "S1"
    assert t.assign_embedding(e2).speaker == "S2"
    r = t.assign_embedding(near1)
    assert r.speaker == "S1" and not r.new and r.distance is not None and r.distance < 0.01
    third = np.eye(EMBEDDING_DIM, dtype=np.float32)[2]  # far from both, but 2 is the maximum
    assert t.assign_embedding(third).speaker in {"S1", "S2"} and len(t.speakers) == 2
    assert t.assign_embedding(mid).speaker in {"S1", "S2"}


def test_cli_names_a_missing_enrolment_file(run_cli, demo_dir, tmp_path) -> None:
    missing = tmp_path / "nobody.wav"
    result = run_cli(
        "replay", str(demo_dir), "--speed", "max", "--no-zmq", "--quiet",
        "--set", f'speakers.enrol={{Nobody = "{missing}"}}',
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "nobody.wav" in result.stderr and "speakers.enrol" in result.stderr
    assert "Traceback" not in result.stderr
