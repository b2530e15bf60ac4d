"""The trust scores of GradCAMLogger and DeconvLogger through a real Trainer: values, warnings,
neutrality."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_viz.callbacks.gradcam_logger as gradcam_logger
from lightning_viz import DeconvLogger, GradCAMLogger, Probes
from lightning_viz.functional import grad_cam, upsample
from lightning_viz.functional.scores import (
    deletion_insertion,
    random_maps,
    randomized_forward,
    rank_correlation,
    upper_half,
)
from lightning_viz.testing import ShapesCNN, shapes_task
from tests.callbacks.test_neutrality import assert_same_training, train
from tests.helpers import (
    Classifier,
    DigitsClassifier,
    fit,
    image_pixels,
    make_trainer,
    read_events,
)

LAYER = "model.features"
RENDERS = [0, 23, 46, 69]


def scalar(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def text_at(events, step):
    entries = events.Tensors(f"gradcam/{LAYER}/targets/text_summary")
    return next(e for e in entries if e.step == step).tensor_proto.string_val[0].decode()


def test_scores_equal_the_functional_ones_on_the_final_model(tmp_path):
    logger = GradCAMLogger(scores=True, strict=True)
    module = DigitsClassifier("sgd", 0.05)
    fit(module, [logger], tmp_path, epochs=3)
    events = read_events(tmp_path)
    probes, labels = logger.probes.images, logger.probes.labels
    module.eval()
    final = grad_cam(module, probes, LAYER, labels)[LAYER]
    randomized = randomized_forward(module, modules=upper_half(module))
    random_cam = grad_cam(module, probes, LAYER, labels, forward=randomized)[LAYER]
    sanity = scalar(events, f"sanity/gradcam/{LAYER}")
    assert [step for step, _ in sanity] == RENDERS
    assert sanity[-1][1] == pytest.approx(
        rank_correlation(final, random_cam).mean().item(), abs=1e-5
    )
    # stability from the second render on, against the previous render's maps
    stability = scalar(events, f"stability/gradcam/{LAYER}")
    assert [step for step, _ in stability] == RENDERS[1:]
    assert torch.allclose(logger.previous_maps[LAYER], final, atol=1e-5)
    heat = upsample(final, (32, 32))
    curves = deletion_insertion(module, probes, heat, labels)
    unranked = deletion_insertion(module, probes, random_maps(heat), labels)
    faithfulness = f"faithfulness/gradcam/{LAYER}"
    for key, expected in (
        ("deletion", curves.deletion_auc),
        ("insertion", curves.insertion_auc),
        ("deletion_random", unranked.deletion_auc),
    ):
        found = scalar(events, f"{faithfulness}/{key}")
        assert found[-1] == (69, pytest.approx(expected.mean().item(), abs=1e-5)), key
    # a trained net's Grad-CAM deletes the evidence first: no faithfulness warning
    assert (
        scalar(events, f"{faithfulness}/deletion")[-1][1]
        < scalar(events, f"{faithfulness}/deletion_random")[-1][1]
    )
    text = text_at(events, 69)
    assert text.startswith(("stable since epoch", "not settled: rank correlation"))
    assert "| stability | sanity | deletion AUC | random order's |" in text.splitlines()[2]


def test_a_map_alike_on_the_randomized_network_is_marked_in_image_and_text(tmp_path, monkeypatch):
    plain = GradCAMLogger(scores=False, strict=True)
    fit(DigitsClassifier(), [plain], tmp_path / "plain", epochs=1)
    monkeypatch.setattr(gradcam_logger, "INDEPENDENT", -1.0)  # every map counts as alike
    marked = GradCAMLogger(scores=["sanity"], strict=True)
    fit(DigitsClassifier(), [marked], tmp_path / "marked", epochs=1)
    plain_events, marked_events = read_events(tmp_path / "plain"), read_events(tmp_path / "marked")
    assert not [t for t in plain_events.Tags()["scalars"] if t.startswith(("sanity", "stab"))]
    warning = "these maps do not depend on what the network learned"
    assert warning in text_at(marked_events, 23)
    assert warning not in text_at(plain_events, 23)
    taller = image_pixels(marked_events.Images(f"gradcam/{LAYER}")[-1]).shape[0]
    assert taller > image_pixels(plain_events.Images(f"gradcam/{LAYER}")[-1]).shape[0]


def test_the_scores_leave_training_bit_identical(tmp_path):
    """The sanity pass runs the training model with randomized tensors swapped in for one call."""
    without = train(tmp_path / "without", [])
    with_scores = train(tmp_path / "with", [GradCAMLogger(scores=True, strict=True)])
    assert_same_training(without, with_scores)


def test_scores_argument_is_checked():
    assert GradCAMLogger().scores == ("stability",)
    assert GradCAMLogger(scores=True).scores == ("stability", "sanity", "faithfulness")
    assert GradCAMLogger(scores=False).scores == ()
    assert GradCAMLogger(scores="faithfulness").scores == ("faithfulness",)
    with pytest.raises(ValueError, match="`scores` must be True, False or a list of"):
        GradCAMLogger(scores=["sanity", "beauty"])


@pytest.mark.slow
def test_on_the_shapes_task_the_maps_find_the_shape_and_settle(tmp_path):
    """Probes with boxes: the pointing game reaches 90% as the net learns, and the maps' stability
    rises as training converges."""
    images, labels, _ = shapes_task(1200)
    probe_images, probe_labels, boxes = shapes_task(50, seed=1)
    torch.manual_seed(0)
    module = Classifier(ShapesCNN(), lr=0.05)
    probes = Probes(probe_images, probe_labels, boxes=boxes)
    logger = GradCAMLogger(probes=probes, strict=True)
    trainer = make_trainer(tmp_path, [logger], max_epochs=6)
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True))
    events = read_events(tmp_path)
    pointing = [v for _, v in scalar(events, "localization/gradcam/model.features/pointing_game")]
    energy = [v for _, v in scalar(events, "localization/gradcam/model.features/energy_in_box")]
    stability = [v for _, v in scalar(events, "stability/gradcam/model.features")]
    assert len(pointing) == len(energy) == 7  # fit start and every epoch
    assert pointing[-1] >= 0.9, pointing
    assert energy[-1] > energy[0], energy
    assert stability[-1] > stability[0], stability
    assert stability[-1] >= 0.9, stability


def test_probe_boxes_are_checked_and_kept_in_the_state():
    images = torch.rand(2, 1, 8, 8)
    boxes = torch.tensor([[0, 0, 4, 4], [2, 3, 8, 8]])
    probes = Probes(images, boxes=boxes)
    assert torch.equal(Probes.from_state_dict(probes.state_dict()).boxes, boxes)
    for bad in ([[0, 0, 4, 4]], [[0, 0, 9, 4], [0, 0, 1, 1]], [[3, 0, 3, 4], [0, 0, 1, 1]]):
        with pytest.raises(ValueError, match="probe boxes"):
            Probes(images, boxes=torch.tensor(bad))


def test_deconv_sanity_marks_a_layer_below_the_randomized_half(tmp_path):
    """The first conv lies below the re-initialized upper half: its reconstructions cannot
    change (rank correlation 1), and the image says they do not depend on what was learned."""
    layer = "model.features.0"
    scored = DeconvLogger(layers=[layer], scores=["sanity"], strict=True)
    fit(DigitsClassifier("sgd", 0.05), [scored], tmp_path / "scored", epochs=2)
    values = scalar(read_events(tmp_path / "scored"), f"sanity/deconv/{layer}")
    assert [step for step, _ in values] == [23, 46]
    assert all(v == pytest.approx(1.0, abs=1e-4) for _, v in values)
    plain = DeconvLogger(layers=[layer], strict=True)
    fit(DigitsClassifier("sgd", 0.05), [plain], tmp_path / "plain", epochs=2)
    height = {
        run: image_pixels(read_events(tmp_path / run).Images(f"deconv/{layer}")[-1]).shape[0]
        for run in ("scored", "plain")
    }
    assert height["scored"] > height["plain"]  # the note under the image


def test_deconv_sanity_leaves_training_bit_identical(tmp_path):
    without = train(tmp_path / "without", [])
    with_scores = train(tmp_path / "with", [DeconvLogger(scores=True, strict=True)])
    assert_same_training(without, with_scores)
    assert DeconvLogger().scores == ()
