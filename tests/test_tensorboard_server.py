"""End to end: a real TensorBoard server serves our tags from a short demo run."""

import io
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_caption

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(base: str, path: str, **query) -> bytes:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logs")
    demo = subprocess.run(
        [sys.executable, "examples/train_digits.py", "--epochs", "2", "--logdir", str(logdir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                runs = json.loads(get(base, "/data/runs"))
                if runs:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(
                    f"tensorboard did not serve the run: {process.stderr.read()[-2000:]!r}"
                )
            time.sleep(0.5)
        yield base, runs[0]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_scalars_histograms_and_text_are_served(server):
    base, run = server
    scalars = json.loads(get(base, "/data/plugin/scalars/tags"))[run]
    for tag in (
        "filters/model.features.0/noise",
        "filters/model.features.0/drift",
        "activations/model.features.2/zero_fraction",
        "activations/model.features.2/localization",
    ):
        assert tag in scalars
    histograms = json.loads(get(base, "/data/plugin/histograms/tags"))[run]
    assert "activations/model.features.2" in histograms
    assert "filters/model.features.0/noise_histogram" in histograms
    text = json.loads(get(base, "/data/plugin/text/tags"))[run]
    # torch's SummaryWriter.add_text files text under "<tag>/text_summary"
    assert "gradcam/model.features/targets/text_summary" in text
    assert "deconv/model.features.0/channels/text_summary" in text
    values = json.loads(
        get(base, "/data/plugin/scalars/scalars", run=run, tag="filters/model.features.0/noise")
    )
    assert values[0][1] == 0


def test_images_are_served_as_decodable_pngs(server):
    base, run = server
    images = json.loads(get(base, "/data/plugin/images/tags"))[run]
    for tag in (
        "gradcam/model.features",
        "deconv/model.features.0",
        "evolution/model.features.8",
        "filters/model.features.0",
    ):
        assert tag in images
    entries = json.loads(
        get(base, "/data/plugin/images/images", run=run, tag="gradcam/model.features")
    )
    assert entries[0]["step"] == 0
    png = get(base, "/data/plugin/images/individualImage?" + entries[-1]["query"])
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == (2 * 200 + 6, 5 * 118 + 6 + 32)  # 10 captioned probe panels


@pytest.mark.parametrize(
    ("tag", "size", "top"),
    [
        # a note under the image names the probes whose probability hardly moves: its lines
        # depend on the run
        ("occlusion/sensitivity", (2 * 200 + 6, None), 0),
        ("saliency/smoothgrad", (2 * 200 + 6, 5 * 118 + 6 + 32), 0),
        ("lime/weights", (2 * 200 + 6, None), 0),
        ("cam/model.features", (2 * 200 + 6, 5 * 118 + 6 + 32), 0),
        # its blocks run down the page: the legend (title, ramp, 4 lines of note, the line on
        # the probes drawn) is on top
        ("activation_grid/model.features.2", (3 * 98 - 2 + 12, 7 * 16 + 4 * 340 + 5 * 6), 7 * 16),
    ],
)
def test_every_probe_view_is_served_with_captions(server, tag, size, top):
    base, run = server
    entries = json.loads(get(base, "/data/plugin/images/images", run=run, tag=tag))
    assert entries[0]["step"] == 0  # the untrained baseline
    png = get(base, "/data/plugin/images/individualImage?" + entries[-1]["query"])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    width, height = size
    assert pixels.shape[1] == width
    assert height is None or pixels.shape[0] == height
    assert_caption(pixels, "true 0", x=6, y=top + 6, width=96)
    texts = json.loads(get(base, "/data/plugin/text/tags"))[run]
    assert any(text.startswith(tag + "/") for text in texts)


def test_custom_scalars_layout_groups_each_layer(server):
    base, _ = server
    layout = json.loads(get(base, "/data/plugin/custom_scalars/layout"))
    categories = {category["title"]: category for category in layout["category"]}
    paired = categories["layer model.features.0 -> model.features.2"]
    titles = [chart["title"] for chart in paired["chart"]]
    assert titles == [
        "filter noise",
        "filter drift",
        "activation sparsity",
        "activation localization",
    ]
    tags = [chart["multiline"]["tag"] for chart in paired["chart"]]
    # a chart per call the first training batch ran (this ReLU runs once per forward)
    assert tags[2] == [r"^activations/model\.features\.2/(zero_fraction|dead_fraction)$"]
    assert list(categories)[:2] == ["alerts", "health, every layer"]


@pytest.mark.parametrize(
    "tag", ["embedding/model.head", "top_patches/model.features.2", "top_patches/model.features.10"]
)
def test_the_validation_views_are_served_at_every_validation_epoch(server, tag):
    base, run = server
    entries = json.loads(get(base, "/data/plugin/images/images", run=run, tag=tag))
    assert [entry["step"] for entry in entries] == [23, 46]
    png = get(base, "/data/plugin/images/individualImage?" + entries[-1]["query"])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    if tag.startswith("embedding"):
        assert pixels.shape[1] == 350  # as wide as TensorBoard's card
        for colour in ([31, 119, 180], [255, 127, 14]):  # classes 0 and 1 in tab10
            assert (np.abs(pixels.astype(int) - colour).sum(-1) == 0).sum() > 100
    else:
        assert pixels.shape[1] <= 350
        block = 3 * (53 + 2) - 2  # a unit's 3x3 block of 53-pixel patches, headed with it
        assert_caption(pixels, "ch 0", x=6, y=6, width=block)
        texts = json.loads(get(base, "/data/plugin/text/tags"))[run]
        assert f"{tag}/units/text_summary" in texts


def test_the_projector_serves_every_epochs_embedding_with_metadata_and_sprite(server):
    base, run = server
    assert run in json.loads(get(base, "/data/plugin/projector/runs"))
    info = json.loads(get(base, "/data/plugin/projector/info", run=run))
    names = [embedding["tensorName"] for embedding in info["embeddings"]]
    assert names == ["embedding/model.head:00023", "embedding/model.head:00046"]
    shape = info["embeddings"][-1]["tensorShape"]
    assert shape == [360, 64]  # every validation image (below 1,000), the head's input
    tensor = get(base, "/data/plugin/projector/tensor", run=run, name=names[-1], num_rows=360)
    features = np.frombuffer(tensor, dtype=np.float32).reshape(360, 64)
    assert np.isfinite(features).all()
    assert features.std() > 0
    metadata = get(base, "/data/plugin/projector/metadata", run=run, name=names[-1]).decode()
    rows = metadata.splitlines()
    assert rows[0] == "class\tposition"
    assert len(rows) == 361
    sprite = get(base, "/data/plugin/projector/sprite_image", run=run, name=names[-1])
    assert Image.open(io.BytesIO(sprite)).size == (19 * 32, 19 * 32)  # ceil(sqrt(360)) = 19


@pytest.mark.parametrize("layer", ["model.features.6", "model.features.10"])
def test_the_feature_visualization_grid_grows_a_column_per_render(server, layer):
    base, run = server
    tag = f"feature_vis/{layer}"
    entries = json.loads(get(base, "/data/plugin/images/images", run=run, tag=tag))
    assert [entry["step"] for entry in entries] == [0, 23, 46]  # fit start, then every epoch
    png = get(base, "/data/plugin/images/individualImage?" + entries[-1]["query"])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape[1] <= 350  # three columns: as wide as TensorBoard's card
    assert_caption(pixels, "epoch 1", x=pixels.shape[1] - 98, y=0, width=98)
    scalars = json.loads(get(base, "/data/plugin/scalars/tags"))[run]
    assert f"{tag}/objective" in scalars
