"""Facial-expression head: the committed checkpoint reproduces its stored FER2013 scores, gives
probability vectors over FER2013's labels, and a few training steps lower the loss."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from realtime_erc.config import DataConfig
from realtime_erc.features.face_expression import (
    DEFAULT_CHECKPOINT,
    FER_LABELS,
    FaceExpressionError,
    FaceExpressionHead,
    FaceExpressionNet,
    FaceNetOptions,
    standardize,
)
from realtime_erc.training.emotion_data import FaceImages, clean_fer_training, fer_file, load_fer
from realtime_erc.training.face_trainer import (
    FaceTrainOptions,
    TeacherEnsemble,
    augment,
    distillation_loss,
    face_recipe,
    random_erase,
    recipe_key,
    score_faces,
)

DATA = DataConfig().resolve()


def _fer() -> FaceImages:
    try:
        return load_fer(fer_file(DATA))
    except Exception:  # noqa: BLE001 - any reason to not find the data is a skip
        pytest.skip(f"FER2013 not found under {DATA} (set REALTIME_ERC_DATA to the data directory)")


@pytest.fixture(scope="module")
def head() -> FaceExpressionHead:
    return FaceExpressionHead.load()


@pytest.mark.slow
def test_committed_checkpoint_reproduces_its_subset_score(head: FaceExpressionHead) -> None:
    test = _fer().split("PublicTest")
    subset = head.info["subset"]
    idx = np.asarray(subset["indices"])
    assert len(idx) == 300
    scores = score_faces(
        head.net, FaceImages(test.images[idx], test.labels[idx], test.usage[idx], test.source)
    )
    stored = subset["scores"]
    assert scores["accuracy"] == stored["accuracy"]
    assert scores["unweighted_accuracy"] == stored["unweighted_accuracy"]
    assert scores["nll"] == pytest.approx(stored["nll"], abs=1e-3)
    assert head.info["public_test"]["accuracy"] >= 0.5  # the full-set figure stored with it


def test_predictions_are_probabilities_over_fer_labels(head: FaceExpressionHead) -> None:
    assert head.labels == FER_LABELS
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    bgr = rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)  # any size, BGR
    for crop in (gray, bgr):
        p = head.predict(crop)
        assert p.shape == (len(FER_LABELS),)
        assert np.all(p >= 0) and p.sum() == pytest.approx(1.0, abs=1e-5)
        e = head.embed(crop)
        assert e.shape == (head.embed_dim,) and np.isfinite(e).all()
    batch = head.predict([gray, bgr])
    assert batch.shape == (2, len(FER_LABELS))
    np.testing.assert_allclose(batch[0], head.predict(gray), atol=1e-5)


def test_real_faces_are_classified_above_chance(head: FaceExpressionHead) -> None:
    test = _fer().split("PublicTest")
    probs = head.predict(test.images[:200])
    assert probs.shape == (200, 7)
    assert (probs.argmax(1) == test.labels[:200]).mean() > 0.4  # chance ≈ 0.25 (majority)


def test_bad_crops_and_checkpoints_are_refused(head: FaceExpressionHead, tmp_path) -> None:
    with pytest.raises(FaceExpressionError, match="gray or"):
        head.predict([np.zeros((48, 48, 4), dtype=np.uint8)])
    with pytest.raises(FaceExpressionError, match="does not exist"):
        FaceExpressionHead.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"something": 1}, bad)
    with pytest.raises(FaceExpressionError, match="not a face-expression checkpoint"):
        FaceExpressionHead.load(bad)


@pytest.mark.slow
def test_a_few_training_steps_lower_the_loss() -> None:
    fer = _fer()
    images = torch.from_numpy(fer.images[:64]).float().unsqueeze(1) / 255.0
    labels = torch.from_numpy(fer.labels[:64])
    torch.manual_seed(0)
    net = FaceExpressionNet(FaceNetOptions(dropout=0.0)).train()  # batch-norm on batch stats
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    options = FaceTrainOptions()
    x_fixed = standardize(images[:, :, 4:44, 4:44])

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(net(x_fixed), labels))

    before = loss()
    for _ in range(12):
        x = standardize(augment(images, net.options.crop, options, gen))
        step = F.cross_entropy(net(x), labels)
        opt.zero_grad()
        step.backward()
        opt.step()
    assert loss() < before


def test_random_erase_blanks_one_rectangle_in_the_chosen_images() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 40, 40)
    out = random_erase(x, prob=0.5, max_area=0.3, gen=gen)
    changed = (out != x).flatten(1).float().mean(1)
    assert 10 < int((changed > 0).sum()) < 54  # about half the images
    assert float(changed.max()) <= 0.3 + 1e-6  # at most max_area of the image
    for i in torch.nonzero(changed > 0).flatten().tolist():
        mask = out[i, 0] != x[i, 0]
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert bool(box.all()) or float(box.float().mean()) > 0.9  # one filled rectangle
        assert torch.allclose(out[i, 0][mask], x[i].mean().expand(int(mask.sum())))


def test_distillation_from_an_ensemble_of_one_is_its_tempered_distribution() -> None:
    torch.manual_seed(0)
    net = FaceExpressionNet(FaceNetOptions(widths=(4, 8), embed_dim=8)).eval()
    x = torch.randn(5, 1, 40, 40)
    opts = FaceTrainOptions(distill_temperature=4.0, distill_weight=1.0)
    one = TeacherEnsemble([net], opts.distill_temperature)
    with torch.no_grad():
        z = net(x)
        assert torch.allclose(torch.softmax(one(x) / 4, -1), torch.softmax(z / 4, -1), atol=1e-6)
        # a student equal to its teacher has nothing to learn from it; a different one does
        zero = distillation_loss(z, one(x), torch.tensor(0.0), opts)
        assert float(zero) == pytest.approx(0.0, abs=1e-6)
        assert float(distillation_loss(z.flip(-1), one(x), torch.tensor(0.0), opts)) > 0.01
        pair = TeacherEnsemble([net, net], opts.distill_temperature)
        assert torch.allclose(pair(x), one(x), atol=1e-5)


def test_face_recipe_settings_and_their_refusals() -> None:
    train, net = face_recipe(
        FaceTrainOptions(seed=3),
        ["erase_prob=0.25", "batch_size=256", "teacher=a.pt,b.pt", "net.widths=64,128,256"],
    )
    assert (train.erase_prob, train.batch_size, train.teacher, train.seed) == (
        0.25, 256, "a.pt,b.pt", 3
    )  # fmt: skip
    assert net.widths == (64, 128, 256)
    assert recipe_key(train, net) != recipe_key(FaceTrainOptions(seed=3), FaceNetOptions())
    for bad, says in (("nope=1", "erase_prob"), ("epochs", "KEY=VALUE"), ("epochs=x", "int")):
        with pytest.raises(FaceExpressionError, match=says):
            face_recipe(FaceTrainOptions(), [bad])


def test_cleaning_drops_black_test_copies_and_duplicates() -> None:
    rng = np.random.default_rng(1)
    imgs = rng.integers(1, 256, (6, 48, 48), dtype=np.uint8)
    imgs[1] = 0  # all black
    imgs[3] = imgs[2]  # duplicate within training
    test_imgs = imgs[4:5].copy()  # image 4 also in the test split
    train = FaceImages(imgs, np.arange(6), np.array(["Training"] * 6), DATA)
    test = FaceImages(test_imgs, np.array([4]), np.array(["PublicTest"]), DATA)
    cleaned, counts = clean_fer_training(train, test)
    assert cleaned.labels.tolist() == [0, 2, 5]
    assert counts == {"all_black": 1, "identical_to_test": 1, "duplicate_copies": 1, "kept": 3}


@pytest.mark.slow
def test_cli_trains_and_evaluates_on_a_fer_layout_file(run_cli, tmp_path, monkeypatch) -> None:
    """End to end on a synthetic FER2013-layout file: two well-separated 'expressions'."""
    rng = np.random.default_rng(0)
    n = 96
    labels = np.arange(n) % 2 * 3  # angry (0) vs happy (3)
    images = rng.integers(0, 60, (n, 48, 48)).astype(np.uint8)
    images[labels == 3, 30:40, 12:36] = 230  # a bright "smile" band
    usage = np.array(["Training"] * 64 + ["PublicTest"] * 32)
    npz = tmp_path / "tiny.npz"
    np.savez_compressed(
        npz, images=images, labels=labels, usage=usage, class_names=np.array(FER_LABELS)
    )
    ckpt = tmp_path / "face.pt"
    monkeypatch.setenv("REALTIME_ERC_CACHE", str(tmp_path / "cache"))  # resumable state
    trained = run_cli(
        "train-extractor", "face", "--data", str(npz), "--out", str(ckpt), "--epochs", "2"
    )
    assert trained.returncode == 0, trained.stderr
    assert ckpt.is_file()
    student = tmp_path / "student.pt"
    distilled = run_cli(
        "train-extractor", "face", "--data", str(npz), "--out", str(student), "--epochs", "1",
        "--option", f"teacher={ckpt}", "--option", "erase_prob=0.5", "--option", "batch_size=16",
    )  # fmt: skip
    assert distilled.returncode == 0, distilled.stderr
    info = FaceExpressionHead.load(student).info
    assert info["options"]["teacher"] == str(ckpt) and info["options"]["batch_size"] == 16
    assert info["teachers"][0]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    refused = run_cli("train-extractor", "face", "--data", str(npz), "--option", "widths=8")
    assert refused.returncode == 2 and "net.<widths" in refused.stderr, refused.stderr
    speech = run_cli("train-extractor", "speech", "--option", "erase_prob=0.5")
    assert speech.returncode == 2 and "egemaps=true|false" in speech.stderr, speech.stderr
    result = run_cli("evaluate-extractor", "face", "--data", str(npz), "--checkpoint", str(ckpt))
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout[result.stdout.index("{") :])
    assert set(scores) == {"PublicTest", "Training"}
    assert scores["PublicTest"]["n"] == 32
    missing = run_cli("evaluate-extractor", "face", "--data", str(tmp_path / "nope.npz"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_default_checkpoint_is_packaged() -> None:
    assert DEFAULT_CHECKPOINT.is_file()
    assert DEFAULT_CHECKPOINT.stat().st_size < 5_000_000
