"""OcclusionLogger through a real Trainer: images, captions, the table's numbers, localization."""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_viz import GradCAMLogger, OcclusionLogger, Probes, tags
from lightning_viz.functional import deletion_insertion, occlusion, upsample
from lightning_viz.testing import ShapesCNN, shapes_task
from tests.callbacks.test_probe_loggers import EPOCH_ENDS, Autoencoder
from tests.helpers import (
    Classifier,
    DigitsClassifier,
    assert_caption,
    fit,
    image_pixels,
    make_trainer,
    pointing_game,
    read_events,
    text_rows,
)


def test_occlusion_images_at_every_logged_epoch_with_captions_and_the_largest_drops(tmp_path):
    logger = OcclusionLogger(strict=True)
    module = DigitsClassifier("sgd", 0.05)
    fit(module, [logger], tmp_path, epochs=3)
    events = read_events(tmp_path)
    images = events.Images("occlusion/sensitivity")
    assert [i.step for i in images] == [0, *EPOCH_ENDS]
    assert logger._window == (8, 8)  # a quarter of the 32-pixel probes
    assert logger._stride == (4, 4)
    # the same panel layout as Grad-CAM: 10 probes, 2 panels per row, then the colour bar
    assert (images[-1].width, images[-1].height) == (2 * 200 + 6, 5 * 118 + 6 + 32)
    pixels = image_pixels(images[-1])
    assert_caption(pixels, "true 0", x=6, y=6, width=96)
    assert_caption(pixels, "true 3", x=6 + 200, y=6 + 118, width=96)
    # the table's largest drop is the functional occlusion of the final model
    expected = occlusion(
        module.eval(), logger.probes.images, logger.probes.labels, window=8, stride=4
    )
    rows = text_rows(events, "occlusion/sensitivity/targets")
    assert [row[1] for row in rows] == [str(c) for c in range(10)]  # explains the true class
    largest = torch.tensor([float(row[4]) for row in rows])
    assert torch.allclose(largest, expected.flatten(1).amax(dim=1), atol=1e-3)
    assert largest.max() > 0.01


def test_occlusion_points_at_the_shape_that_decides_the_class(tmp_path):
    """The pointing game on the occlusion map of a net that learned the shapes task."""
    images, labels, _ = shapes_task(1200)
    probe_images, probe_labels, boxes = shapes_task(50, seed=1)
    torch.manual_seed(0)
    module = Classifier(ShapesCNN(), lr=0.05)
    logger = OcclusionLogger(probes=Probes(probe_images, probe_labels), strict=True)
    trainer = make_trainer(tmp_path, [logger], max_epochs=5)
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True))
    sensitivity = occlusion(module.eval(), probe_images, probe_labels, window=8, stride=4)
    assert pointing_game(upsample(sensitivity, (32, 32)), boxes) >= 0.8
    assert len(read_events(tmp_path).Images("occlusion/sensitivity")) == 6


def test_an_autoencoder_gets_a_notice_and_training_goes_on(tmp_path):
    logger = OcclusionLogger(on_alert="stop")
    with pytest.warns(UserWarning, match=r"OcclusionLogger: the model returns an image the size"):
        trainer = fit(Autoencoder(), [logger], tmp_path, epochs=2, limit_train_batches=2)
    assert trainer.current_epoch == 2
    assert [a.kind for a in logger.alerts.raised] == ["not_shown"]


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: OcclusionLogger(window=0), "`window` must be a positive int"),
        (lambda: OcclusionLogger(stride=(2, 2, 2)), "`stride` must be a positive int"),
        (lambda: OcclusionLogger(baseline=float("nan")), "`baseline` must be a finite number"),
        (lambda: OcclusionLogger(max_batch=0), "`max_batch` must be a positive integer"),
        (lambda: OcclusionLogger(target="best"), "`target` must be 'label', 'pred'"),
    ],
)
def test_bad_arguments_fail_at_construction(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_a_window_larger_than_the_probes_fails_at_fit_start(tmp_path):
    with pytest.raises(ValueError, match=r"`window` \(40, 40\) is larger than the probes"):
        fit(DigitsClassifier(), [OcclusionLogger(window=40)], tmp_path, epochs=1)


class Scorer(pl.LightningModule):
    """A small CNN with ``outputs`` scores per image, trained with ``loss`` on them (a regression
    has one output and the MSE; a multi-label model one per class and BCEWithLogitsLoss)."""

    def __init__(self, outputs, loss):
        super().__init__()
        self.model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
            torch.nn.Flatten(), torch.nn.Linear(128, outputs),
        )  # fmt: skip
        self.loss = loss

    def forward(self, images):
        return self.model(images)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        return self.loss(self(images), targets)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_model_with_one_output_is_explained_by_its_value_not_a_softmax(tmp_path):
    """A regression head's captions said "pred 0 100%" (the softmax of one output), and the
    occlusion of that probability was 0 everywhere. Its float targets are the probes' values:
    the captions read "probe 0" and no table gave the true value beside the output."""
    images = torch.rand(64, 1, 16, 16)
    targets = images.mean(dim=(1, 2, 3))[:, None]
    data = DataLoader(TensorDataset(images, targets), batch_size=8)
    logger, gradcam = OcclusionLogger(strict=True), GradCAMLogger(strict=True)
    module = Scorer(1, torch.nn.functional.mse_loss)
    make_trainer(tmp_path, [logger, gradcam], max_epochs=1).fit(module, data)
    events = read_events(tmp_path)
    # 8 probes spread over the range of the targets (4 x 16 images read), lowest first
    ranked = targets[:, 0].sort().values
    assert logger.probes.values.tolist() == ranked[::9].tolist()
    with torch.no_grad():
        outputs = module.eval()(logger.probes.images)[:, 0]
    for tag in ("occlusion/sensitivity/targets", "gradcam/model.1/targets"):
        rows = text_rows(events, tag)
        assert [int(row[0]) for row in rows] == list(range(8))
        assert [float(row[1]) for row in rows] == pytest.approx(
            logger.probes.values.tolist(), abs=1e-3
        )
        assert [float(row[2]) for row in rows] == pytest.approx(outputs.tolist(), rel=1e-3)
    # the occlusion of the output itself: its drops are the functional view's on raw scores
    expected = occlusion(module, logger.probes.images, 0, window=4, stride=2, probabilities=False)
    drops = [float(row[3]) for row in text_rows(events, "occlusion/sensitivity/targets")]
    assert drops == pytest.approx(expected.flatten(1).amax(dim=1).tolist(), abs=1e-3)
    assert max(drops) > 0
    pixels = image_pixels(events.Images("gradcam/model.1")[-1])
    assert_caption(pixels, f"true {logger.probes.values[0].item():.3g}", x=6, y=6, width=96)
    assert_caption(pixels, f"out {outputs[0].item():.3g}", x=6 + 98, y=6, width=96)


def test_a_single_outputs_faithfulness_follows_its_value(tmp_path):
    """The deletion curves of a model with one output read the softmax of that output: 1.0 at
    every step, whatever the map, so every AUC was a flat 1.0."""
    images = torch.rand(32, 1, 16, 16)
    data = DataLoader(TensorDataset(images, images.mean(dim=(1, 2, 3))[:, None]), batch_size=8)
    logger = OcclusionLogger(scores=["faithfulness"], strict=True)
    module = Scorer(1, torch.nn.functional.mse_loss)
    make_trainer(tmp_path, [logger], max_epochs=1).fit(module, data)
    events = read_events(tmp_path)
    module.eval()
    probes = logger.probes.images
    maps = occlusion(module, probes, 0, logger._window, logger._stride, probabilities=False)
    curves = deletion_insertion(module, probes, upsample(maps, (16, 16)), 0, probabilities=False)
    for key, auc in (("deletion", curves.deletion_auc), ("insertion", curves.insertion_auc)):
        found = events.Scalars(f"faithfulness/occlusion/sensitivity/{key}")[-1].value
        assert found == pytest.approx(auc.mean().item(), abs=1e-4)
        assert found != pytest.approx(1.0)


def test_a_multi_label_model_is_read_through_each_class_s_sigmoid(tmp_path):
    """Captions and the table gave the softmax over four independent classes (31% where each
    sigmoid said 50%), and occlusion measured that softmax."""
    images = torch.rand(32, 1, 16, 16)
    data = DataLoader(TensorDataset(images, (torch.rand(32, 4) > 0.5).float()), batch_size=8)
    logger = OcclusionLogger(target="pred", probability="sigmoid", strict=True)
    gradcam = GradCAMLogger(target="pred", probability="sigmoid", strict=True)
    module = Scorer(4, torch.nn.functional.binary_cross_entropy_with_logits)
    make_trainer(tmp_path, [logger, gradcam], max_epochs=1).fit(module, data)
    events = read_events(tmp_path)
    with torch.no_grad():
        probability, predicted = module.eval()(logger.probes.images).sigmoid().max(dim=1)
    rows = text_rows(events, "gradcam/model.1/targets")
    assert [int(row[2]) for row in rows] == predicted.tolist()
    assert [float(row[3]) for row in rows] == pytest.approx(probability.tolist(), abs=5e-3)
    pixels = image_pixels(events.Images("gradcam/model.1")[-1])
    # each class on its own: no one prediction, the class's own probability
    missed = "✗ " if logger.probes.labels[0] == predicted[0] and probability[0] < 0.5 else ""
    caption = f"{missed}{predicted[0]} {probability[0]:.0%}"
    assert_caption(pixels, caption, x=6 + 98, y=6, width=96)
    expected = occlusion(
        module, logger.probes.images, predicted, window=4, stride=2, probabilities="sigmoid"
    )
    drops = [float(row[4]) for row in text_rows(events, "occlusion/sensitivity/targets")]
    assert drops == pytest.approx(expected.flatten(1).amax(dim=1).tolist(), abs=1e-3)
    with pytest.raises(ValueError, match="`probability` must be one of"):
        GradCAMLogger(probability="softmax2")


def test_multi_hot_targets_give_a_probe_per_class_read_through_its_sigmoid(tmp_path):
    """Multi-hot targets were no labels: the probes were the first 8 images, each explained
    for its highest-scoring class, through a softmax unless probability="sigmoid" was given."""
    targets = (torch.rand(32, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    images = torch.rand(32, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    data = DataLoader(TensorDataset(images, targets), batch_size=8)
    gradcam = GradCAMLogger(strict=True)
    module = Scorer(4, torch.nn.functional.binary_cross_entropy_with_logits)
    make_trainer(tmp_path, [gradcam], max_epochs=1).fit(module, data)
    probes = gradcam.probes
    assert probes.multi_label
    assert probes.labels[:4].tolist() == [0, 1, 2, 3]
    on = targets[[int((images == image).all(dim=(1, 2, 3)).nonzero()) for image in probes.images]]
    assert all(on[i, label] == 1 for i, label in enumerate(probes.labels.tolist()))
    events = read_events(tmp_path)
    rows = text_rows(events, "gradcam/model.1/targets")
    assert [int(row[1]) for row in rows] == probes.labels.tolist()  # each explains its class
    with torch.no_grad():
        sigmoids = module.eval()(probes.images).sigmoid()
    own = sigmoids.gather(1, probes.labels[:, None])[:, 0]  # the explained class's, not the top
    assert [float(row[3]) for row in rows] == pytest.approx(own.tolist(), abs=5e-3)
    # no one prediction to call wrong: a class the probe has, at its own probability (a correct
    # "even" read "✗ pred even" beside a probe labelled "has loop")
    pixels = image_pixels(events.Images("gradcam/model.1")[-1])
    caption = f"{'✗ ' if own[0] < 0.5 else ''}0 {own[0]:.0%}"
    assert_caption(pixels, caption, x=6 + 98, y=6, width=96)


def test_a_single_logit_binary_classifier_with_labelled_probes_shows_its_probability(tmp_path):
    """Labels 0 and 1 are no classes of a model with one output: given probes with them, the
    fit failed at start ("labels must lie in [0, 1)")."""
    images = torch.rand(32, 1, 16, 16)
    labels = (images.mean(dim=(1, 2, 3)) > 0.5).long()

    def bce(scores, targets):
        return torch.nn.functional.binary_cross_entropy_with_logits(scores[:, 0], targets.float())

    module = Scorer(1, bce)
    logger = GradCAMLogger(probability="sigmoid", probes=Probes(images[:8], labels[:8]))
    data = DataLoader(TensorDataset(images, labels), batch_size=8)
    make_trainer(tmp_path, [logger], max_epochs=1).fit(module, data)
    with torch.no_grad():
        probability = module.eval()(images[:8])[:, 0].sigmoid()
    rows = text_rows(read_events(tmp_path), "gradcam/model.1/targets")
    assert [float(row[1]) for row in rows] == pytest.approx(probability.tolist(), abs=1e-3)
    pixels = image_pixels(read_events(tmp_path).Images("gradcam/model.1")[-1])
    assert_caption(pixels, "true 1" if labels[0] else "true 0", x=6, y=6, width=96)
    assert_caption(pixels, f"p {probability[0]:.0%}", x=6 + 98, y=6, width=96)
    with pytest.raises(ValueError, match="target='label' needs a score per class"):
        make_trainer(tmp_path, [GradCAMLogger(target="label", probes=logger.probes)]).fit(
            Scorer(1, bce), data
        )


@pytest.mark.parametrize("view", ["occlusion", "lime"])
def test_maps_whose_probability_hardly_moves_are_drawn_faint(tmp_path, view):
    """A probe predicted at 1.00 whose largest drop was under 0.0005 was drawn as deep red as
    one whose class hung on a patch: each map stretched to its own largest change."""
    from lightning_viz import LIMELogger

    module = DigitsClassifier("sgd", 0.0)
    head = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias[0] = 4.0  # class 0 at 0.86 whatever the image: a patch moves it by 3e-4
    logger = (OcclusionLogger if view == "occlusion" else LIMELogger)(
        target="pred", num_probes=4, strict=True
    )
    fit(module, [logger], tmp_path, epochs=1, limit_train_batches=1)
    tag = tags.OCCLUSION if view == "occlusion" else tags.LIME
    pixels = image_pixels(read_events(tmp_path).Images(tag)[-1]).astype(int)
    maps = pixels[6:118, 6 + 98 : 6 + 98 + 96]  # the first probe's map and its caption
    saturation = maps.max(axis=-1) - maps.min(axis=-1)
    assert saturation.max() <= 16  # grey digits under a near-white heat: no red, no blue
    assert logger.faint_note(logger.probes, torch.tensor([0.2, 0.005, 0.0]), "largest change") == (
        "The largest change of probes 1 (true 1), 2 (true 2) stays under 0.01 of the "
        "probability: drawn on a scale of 0.01, faint, not stretched to full colour."
    )
