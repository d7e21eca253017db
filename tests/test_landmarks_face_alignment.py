"""fer.data.landmarks with the real face-alignment package, offline.

No weights are downloaded: the test saves random weights of face-alignment's own
networks (FAN and S3FD) as the files it loads, under the names and in the folder it
reads them from (``$TORCH_HOME/hub/checkpoints``), and fails on any download attempt.
S3FD's detection heads are set so that it finds exactly one face (a 96 px box in the
middle of a 128 px image) whatever the picture, so the detected path is exercised;
everything else is randomly initialised. One FAN pass on a CPU thread takes ~10 s. The weights of the real networks are
published at the addresses in :data:`fer.data.landmarks.FACE_ALIGNMENT_WEIGHTS`
(README, "Landmarks with face-alignment").
"""
from __future__ import annotations

import math
import urllib.error

import numpy as np
import pytest
import torch

face_alignment = pytest.importorskip(
    "face_alignment",
    reason="face-alignment is not installed; the `test` extra installs it (pip install -e '.[test]', which "
           "`make test` runs), and so does the `landmarks` extra")

from face_alignment import api as fa_api  # noqa: E402
from face_alignment import utils as fa_utils  # noqa: E402
from face_alignment.detection.sfd import sfd_detector  # noqa: E402
from face_alignment.detection.sfd.net_s3fd import s3fd  # noqa: E402
from face_alignment.models import FAN  # noqa: E402

from fer.data import SynFER  # noqa: E402
from fer.data.landmarks import FACE_ALIGNMENT_WEIGHTS, detect, face_alignment_weights_dir  # noqa: E402
from fer.data.landmarks import backends  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

FAN_FILE, S3FD_FILE = "2DFAN4-11f355bf06.pth.tar", "s3fd-619a316812.pth"
#: Where the rigged S3FD puts its one face in a 128 px image: centre 64, side 96.
BOX = (16.0, 16.0, 112.0, 112.0)


def _one_face_s3fd() -> dict[str, torch.Tensor]:
    """S3FD with random weights whose heads say "background" everywhere but at one anchor.

    The coarsest scale (stride 128, 512 px prior) is 2 x 2 on a 128 px image. Its face
    score reads the features through the top-left tap of its 3 x 3 kernel only, which
    sees zero padding for three of the four anchors and data for the bottom-right one;
    the box regression moves that anchor's prior to a 96 px box in the image's middle.
    """
    net = s3fd()
    with torch.no_grad():
        for name, m in net.named_modules():
            if name.endswith("_mbox_conf") or name.endswith("_mbox_loc"):
                m.weight.zero_()
                m.bias.zero_()
            if name.endswith("_mbox_conf"):
                m.bias.fill_(10.0)  # background channel(s) ...
                m.bias[-1] = -10.0  # ... over the face channel, the last
        net.conv7_2_mbox_conf.weight[-1, :, 0, 0] = 1000.0
        # centre = 192 + 0.1 * 512 * t -> 64; side = 512 * exp(0.2 * t) -> 96
        net.conv7_2_mbox_loc.bias[:2] = -2.5
        net.conv7_2_mbox_loc.bias[2:] = math.log(96 / 512) / 0.2
    return net.state_dict()


@pytest.fixture()
def offline_weights(tmp_path, monkeypatch):
    """Random FAN / rigged S3FD weights where face-alignment looks for them; downloads fail."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    wdir = face_alignment_weights_dir()
    assert wdir == tmp_path / "torch" / "hub" / "checkpoints"
    wdir.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), wdir / FAN_FILE)
    torch.save(_one_face_s3fd(), wdir / S3FD_FILE)
    attempts: list[str] = []

    def offline(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError(f"offline test: refused to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(fa_utils, "download_url_to_file", offline)
    backends._fa_model.cache_clear()
    yield wdir, attempts
    backends._fa_model.cache_clear()


def test_weight_names_and_addresses_are_face_alignments():
    """The files fer documents are the ones this face-alignment version loads."""
    assert set(FACE_ALIGNMENT_WEIGHTS) == {FAN_FILE, S3FD_FILE}
    assert FACE_ALIGNMENT_WEIGHTS[FAN_FILE] == fa_api.models_urls["2DFAN-4"]
    assert FACE_ALIGNMENT_WEIGHTS[S3FD_FILE] == sfd_detector.models_urls["s3fd"]
    for name, url in FACE_ALIGNMENT_WEIGHTS.items():
        assert url.rsplit("/", 1)[-1] == name  # face-alignment names the cached file after the URL


def test_face_alignment_backend_offline(offline_weights):
    _, attempts = offline_weights
    image = SynFER("clean", "test", n=1, image_size=128, with_relevance=False)[0]["image"]
    # flip_input=False: FAN's flipped second pass (test-time augmentation) would double the ~10 s on one CPU thread
    res = detect(image, backend="face_alignment", device="cpu", flip_input=False)
    assert attempts == []  # nothing was downloaded
    assert res.backend == "face_alignment" and len(res) == 1
    assert res.ok[0] and res.detected[0] and res.messages == [""]
    assert np.allclose(res.boxes[0], BOX, atol=1.0)  # the one face S3FD was rigged to find
    assert res.landmarks.shape == (1, 68, 2) and np.isfinite(res.landmarks).all()
    # FAN's points come from its 64 x 64 heat maps over its face crop, a square of side
    # 200 * (w + h) / 195 px (S3FD's reference scale) around the box centre raised by 0.12 h:
    # inside it, and spread out
    side = 200 * (BOX[2] - BOX[0] + BOX[3] - BOX[1]) / 195
    centre = np.array([64.0, 64.0 - 0.12 * (BOX[3] - BOX[1])])
    assert (np.abs(res.landmarks[0] - centre) <= side / 2 + 2).all()
    assert len(np.unique(res.landmarks[0].round(), axis=0)) > 10


def test_missing_weights_offline_name_the_file_and_its_address(offline_weights):
    wdir, attempts = offline_weights
    (wdir / FAN_FILE).unlink()
    with pytest.raises(RuntimeError) as info:
        detect(np.zeros((128, 128, 3), np.uint8), backend="face_alignment", device="cpu")
    msg = str(info.value)
    assert str(wdir) in msg and f"{FAN_FILE} <- {FACE_ALIGNMENT_WEIGHTS[FAN_FILE]}" in msg
    assert S3FD_FILE not in msg  # only the missing file is listed
    assert attempts == [FACE_ALIGNMENT_WEIGHTS[FAN_FILE]]
