"""MediaPipe FaceLandmarker features on FER2013 faces rendered into video frames.

The faces are read from the data directory at test time (skipped when it is absent); blank
frames need nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from feature_media import face_frame, fer_faces, place

from realtime_erc.events import VideoFrame
from realtime_erc.features.visual import (
    CROP_SIZE,
    N_BLENDSHAPES,
    VISUAL_DIM,
    FaceFeatures,
    VisualOptions,
)

OPEN_MOUTH, CLOSED_MOUTH = [2, 29], [16, 41]  # FER2013 Training rows (surprise/fear vs calm)
CONFIDENCE = 0.3  # 48 px faces upscaled are blurry: detection scores sit near the 0.5 default


def frames_of(images: list[np.ndarray], fps: float = 5.0) -> list[VideoFrame]:
    return [VideoFrame(img, i, i / fps) for i, img in enumerate(images)]


@pytest.fixture(scope="module")
def single() -> FaceFeatures:
    ff = FaceFeatures(VisualOptions(num_faces=1, min_confidence=CONFIDENCE), running_mode="image")
    yield ff
    ff.close()


def test_a_face_in_a_video_frame_gives_finite_vectors_of_the_documented_shape(single) -> None:
    face = fer_faces([3])[0]
    frames = frames_of([face_frame(face)] * 4)
    result = single.extract(frames)
    feats = result.features
    assert feats.present and result.chosen_by == "only" and result.tracks == 1
    assert feats.pooled.shape == (VISUAL_DIM,) == (64,) and np.isfinite(feats.pooled).all()
    assert feats.sequence.shape == (4, VISUAL_DIM) and feats.mask.all()
    blend = feats.pooled[:N_BLENDSHAPES]
    assert ((blend >= 0) & (blend <= 1)).all() and blend.sum() > 0
    np.testing.assert_allclose(feats.pooled, feats.sequence.mean(0), atol=1e-6)
    # the aligned crop is that face, at FER2013's size
    crop = result.face_crop
    assert crop is not None and crop.shape == (CROP_SIZE, CROP_SIZE) and crop.dtype == np.uint8
    r = np.corrcoef(crop.ravel().astype(float), face.ravel().astype(float))[0, 1]
    assert r > 0.4


def test_mouth_geometry_follows_the_face(single) -> None:
    opened = [single.analyze(face_frame(f), 0.0).faces[0].mouth_open for f in fer_faces(OPEN_MOUTH)]
    closed = [
        single.analyze(face_frame(f), 0.0).faces[0].mouth_open for f in fer_faces(CLOSED_MOUTH)
    ]
    assert min(opened) > 3 * max(closed)


def test_no_face_marks_the_modality_absent(single) -> None:
    blank = face_frame(None)
    result = single.extract(frames_of([blank] * 3))
    assert not result.features.present and not result.features.pooled.any()
    assert result.face_crop is None and result.chosen_by == "none" and result.frames == 3
    empty = single.summarize([])
    assert not empty.features.present and empty.features.pooled.shape == (VISUAL_DIM,)


def twenty_faces() -> np.ndarray:
    canvas = np.full((480, 600, 3), 110, np.uint8)
    for k, face in enumerate(fer_faces(list(range(100, 120)))):
        place(canvas, face, (k % 5) * 120, (k // 5) * 120, 120)
    return canvas


def test_a_twenty_face_frame_is_handled_within_num_faces() -> None:
    frame = twenty_faces()
    many = FaceFeatures(VisualOptions(num_faces=20, min_confidence=CONFIDENCE), "image")
    few = FaceFeatures(VisualOptions(num_faces=2, min_confidence=CONFIDENCE), "image")
    try:
        found = many.analyze(frame, 0.0).faces
        # MediaPipe's short-range detector misses some of these small (120 px) faces
        assert 3 <= len(found) <= 20
        assert len(few.analyze(frame, 0.0).faces) <= 2
        result = many.extract(frames_of([frame] * 3))
        assert result.features.present and result.tracks == len(found)
        assert np.isfinite(result.features.pooled).all()
        boxes = [f.box for f in found]  # distinct faces, not one face reported many times
        centres = {(round((b[0] + b[2]) / 240), round((b[1] + b[3]) / 240)) for b in boxes}
        assert len(centres) == len(found)
    finally:
        many.close()
        few.close()


def test_mouth_sync_picks_the_face_that_talks_and_largest_the_biggest() -> None:
    """Left face (small): its mouth opens whenever the voice is loud. Right face (big): still."""
    opened, closed = fer_faces(OPEN_MOUTH), fer_faces(CLOSED_MOUTH)
    still = fer_faces([3])[0]
    loud = [True, False, True, False, False, True, True, False, True, False]
    images, fps = [], 5.0
    for i, talking in enumerate(loud):
        canvas = np.full((480, 640, 3), 110, np.uint8)
        place(canvas, (opened if talking else closed)[i % 2], 40, 150, 170)
        place(canvas, still, 360, 110, 250)
        images.append(canvas)
    rng = np.random.default_rng(0)
    samples = np.zeros(int(len(loud) / fps * 16000), np.float32)
    for i, talking in enumerate(loud):  # voice around each frame's time
        a, b = int((i / fps - 0.08) * 16000), int((i / fps + 0.08) * 16000)
        level = 0.3 if talking else 0.003
        samples[max(a, 0) : b] = rng.standard_normal(b - max(a, 0)) * level
    for mode, expected_left in (("mouth_sync", True), ("largest", False)):
        options = VisualOptions(num_faces=4, speaker_face=mode, min_confidence=CONFIDENCE)
        ff = FaceFeatures(options, running_mode="image")
        try:
            result = ff.extract(frames_of(images, fps), samples, audio_start=0.0)
        finally:
            ff.close()
        assert result.tracks == 2 and result.chosen_by == mode
        mouth = result.features.sequence[:, N_BLENDSHAPES]
        moving = mouth.std() > 0.05
        assert moving == expected_left, (mode, mouth)
