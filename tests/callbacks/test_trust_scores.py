"""The trust scores of the explaining views and DeconvLogger through a real Trainer: values,
warnings, neutrality, and the published direction of the randomization test."""

import math

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import lightning_viz.callbacks.class_view as class_view
from lightning_viz import (
    CAMLogger,
    DeconvLogger,
    GradCAMLogger,
    LIMELogger,
    OcclusionLogger,
    Probes,
    SaliencyLogger,
)
from lightning_viz.callbacks.base import RunContext
from lightning_viz.functional import (
    class_activation_map,
    grad_cam,
    lime,
    occlusion,
    saliency,
    upsample,
)
from lightning_viz.functional.images import REGION_COLOR
from lightning_viz.functional.scores import (
    deletion_insertion,
    map_similarity,
    random_maps,
    randomized_copy,
    randomized_forward,
    region_masks,
    structural_similarity,
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
        map_similarity(final, random_cam).nanmean().item(), abs=1e-5
    )
    ssim = structural_similarity(upsample(final, (32, 32)), upsample(random_cam, (32, 32)))
    assert scalar(events, f"sanity/gradcam/{LAYER}/ssim")[-1][1] == pytest.approx(
        ssim.mean().item(), abs=1e-5
    )
    # stability from the second render on, against the previous render's maps
    stability = scalar(events, f"stability/gradcam/{LAYER}")
    assert [step for step, _ in stability] == RENDERS[1:]
    assert torch.allclose(logger.previous_maps[f"gradcam/{LAYER}"], final, atol=1e-5)
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
    header = (
        "| stability | sanity | sanity SSIM | deletion AUC | insertion AUC "
        "| random-order deletion AUC |"
    )
    assert header in text.splitlines()[2]


VIEWS = {
    "occlusion": (
        lambda: OcclusionLogger(scores=True, strict=True),
        "occlusion/sensitivity",
        lambda model, logger, images, labels: occlusion(
            model, images, labels, logger._window, logger._stride
        ),
    ),
    "signed gradient": (
        lambda: SaliencyLogger("vanilla", absolute=False, scores=True, strict=True),
        "saliency/vanilla_signed",
        lambda model, logger, images, labels: saliency(model, images, labels, False).sum(dim=1),
    ),
    "smoothgrad": (
        lambda: SaliencyLogger(samples=4, scores=True, strict=True),
        "saliency/smoothgrad",
        None,  # its noise is the callback's: the sanity value is checked by the others
    ),
    "cam": (
        lambda: CAMLogger(scores=True, strict=True),
        f"cam/{LAYER}",
        lambda model, logger, images, labels: class_activation_map(model, images, labels)[0],
    ),
    "lime": (
        lambda: LIMELogger(samples=32, scores=True, strict=True),
        "lime/weights",
        lambda model, logger, images, labels: (
            lime(
                model,
                images,
                logger._labels,
                labels,
                32,
                logger.keep,
                logger.baseline,
                seed=logger.seed,
            ).maps
        ),
    ),
}


@pytest.mark.parametrize("view", list(VIEWS))
def test_every_explaining_view_logs_the_scores_of_what_it_shows(tmp_path, view):
    """Sanity against a deep copy randomized the same way, faithfulness against the functional
    curves, stability from the second render: the scores rate the map the image shows."""
    make, tag, explain = VIEWS[view]
    logger = make()
    module = DigitsClassifier("sgd", 0.05)
    fit(module, [logger], tmp_path, epochs=2)
    events = read_events(tmp_path)
    renders = [0, 23, 46]
    assert [step for step, _ in scalar(events, f"sanity/{tag}")] == renders
    assert [step for step, _ in scalar(events, f"sanity/{tag}/ssim")] == renders
    assert [step for step, _ in scalar(events, f"stability/{tag}")] == renders[1:]
    for key in ("deletion", "insertion", "deletion_random"):
        assert [step for step, _ in scalar(events, f"faithfulness/{tag}/{key}")] == renders
    text = events.Tensors(f"{tag}/targets/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert text.startswith(("stable since epoch", "not settled: rank correlation")), text
    assert "| stability | sanity | sanity SSIM | deletion AUC |" in text
    if explain is None:
        return
    module.eval()
    images, labels = logger.probes.images, logger.probes.labels
    trained = explain(module, logger, images, labels)
    copy = randomized_copy(module, modules=upper_half(module)).eval()
    randomized = explain(copy, logger, images, labels)
    expected = map_similarity(trained, randomized).nanmean().item()
    assert scalar(events, f"sanity/{tag}")[-1][1] == pytest.approx(expected, abs=1e-4)
    heat = upsample(trained, (32, 32))
    deletion = deletion_insertion(module, images, heat, labels).deletion_auc.mean().item()
    found = scalar(events, f"faithfulness/{tag}/deletion")[-1][1]
    assert found == pytest.approx(deletion, abs=1e-4)


def test_a_map_alike_on_the_randomized_network_is_marked_in_image_and_text(tmp_path, monkeypatch):
    plain = GradCAMLogger(scores=False, strict=True)
    fit(DigitsClassifier(), [plain], tmp_path / "plain", epochs=1)
    monkeypatch.setattr(class_view, "INDEPENDENT", -1.0)  # every map counts as alike
    marked = GradCAMLogger(scores=["sanity"], strict=True)
    fit(DigitsClassifier(), [marked], tmp_path / "marked", epochs=1)
    plain_events, marked_events = read_events(tmp_path / "plain"), read_events(tmp_path / "marked")
    assert not [t for t in plain_events.Tags()["scalars"] if t.startswith(("sanity", "stab"))]
    warning = "these maps do not depend on what the network learned"
    assert warning in text_at(marked_events, 23)
    assert warning not in text_at(plain_events, 23)
    taller = image_pixels(marked_events.Images(f"gradcam/{LAYER}")[-1]).shape[0]
    assert taller > image_pixels(plain_events.Images(f"gradcam/{LAYER}")[-1]).shape[0]


def test_an_unfaithful_map_is_marked_only_where_the_model_responds(tmp_path, monkeypatch):
    """With the map's own order as the "random" one, deletion equals the random order's: marked
    on the trained net, not at fit start, where deleting every pixel barely moves the untrained
    net's probability (its flat curves rank nothing)."""
    monkeypatch.setattr(class_view, "random_maps", lambda maps: maps)
    logger = GradCAMLogger(scores=["faithfulness"], strict=True)
    fit(DigitsClassifier("sgd", 0.05), [logger], tmp_path, epochs=2)
    events = read_events(tmp_path)
    warning = "the maps are not faithful to the model"
    assert warning not in text_at(events, 0)
    assert warning in text_at(events, 46)


def test_the_scores_leave_training_bit_identical(tmp_path):
    """The sanity pass runs the training model with randomized tensors swapped in for one call."""
    without = train(tmp_path / "without", [])
    with_scores = train(tmp_path / "with", [GradCAMLogger(scores=True, strict=True)])
    assert_same_training(without, with_scores)


def test_scores_argument_is_checked():
    assert GradCAMLogger().scores == ("stability", "sanity")  # sanity: a cheap pass more
    assert OcclusionLogger().scores == ("stability",)  # sanity: the whole occlusion again
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


def test_probe_masks_give_the_scores_of_the_boxes_they_fill(tmp_path):
    images, labels, _ = shapes_task(64)
    probe_images, probe_labels, boxes = shapes_task(8, seed=1)
    masks = region_masks(boxes, tuple(probe_images.shape[-2:]))
    found = {}
    for name, probes in (
        ("boxes", Probes(probe_images, probe_labels, boxes=boxes)),
        ("masks", Probes(probe_images, probe_labels, masks=masks)),
    ):
        torch.manual_seed(0)
        logger = GradCAMLogger(probes=probes, strict=True)
        trainer = make_trainer(tmp_path / name, [logger], max_epochs=1)
        loader = DataLoader(TensorDataset(images, labels), batch_size=32)
        trainer.fit(Classifier(ShapesCNN()), loader)
        events = read_events(tmp_path / name)
        found[name] = [
            scalar(events, f"localization/gradcam/{LAYER}/{key}")
            for key in ("pointing_game", "energy_in_box")
        ]
    assert found["masks"] == found["boxes"]
    assert len(found["masks"][0]) == 2  # fit start and the epoch's end


def test_probe_boxes_are_outlined_on_the_probes_not_on_their_maps(tmp_path):
    """The localization scores read each probe's box, which no picture showed."""
    images, labels, _ = shapes_task(32)
    probe_images, probe_labels, boxes = shapes_task(4, seed=1)
    yellow = (torch.tensor(REGION_COLOR) * 255).round().to(torch.uint8).numpy()
    for name, probes in (
        ("boxes", Probes(probe_images, probe_labels, boxes=boxes)),
        ("none", Probes(probe_images, probe_labels)),
    ):
        logger = GradCAMLogger(probes=probes, strict=True)
        trainer = make_trainer(tmp_path / name, [logger], max_epochs=1, limit_train_batches=1)
        trainer.fit(Classifier(ShapesCNN()), DataLoader(TensorDataset(images, labels)))
        pixels = image_pixels(read_events(tmp_path / name).Images(f"gradcam/{LAYER}")[-1])
        is_yellow = (pixels[..., :3] == yellow).all(axis=-1)
        if name == "none":
            assert not is_yellow.any()
            continue
        # the first probe's tile: 32 pixels enlarged 3x, under its 16-pixel caption, 6 in
        top, left, bottom, right = (3 * int(v) for v in boxes[0])
        tile = is_yellow[6 + 16 : 6 + 16 + 96, 6 : 6 + 96]
        assert top > 0
        assert bottom < 96
        assert left > 0
        assert right < 96
        # just outside the box, beyond the dark line along it
        assert tile[top - 2, left - 2 : right + 2].all()
        assert tile[bottom + 1, left - 2 : right + 2].all()
        assert tile[top - 2 : bottom + 2, left - 2].all()
        assert tile[top - 2 : bottom + 2, right + 1].all()
        line = (pixels[6 + 16 : 6 + 16 + 96, 6 : 6 + 96, :3] == 0).all(axis=-1)
        assert line[top - 1, left - 1 : right + 1].all()
        assert line[top - 1 : bottom + 1, right].all()
        assert not tile[top:bottom, left:right].any()  # the object's pixels stay as they are
        # and none on the map beside it
        assert tile.sum() == is_yellow[6 + 16 : 6 + 16 + 96, 6 : 6 + 96 + 2 + 96].sum()


def test_probe_boxes_are_checked_and_kept_in_the_state():
    images = torch.rand(2, 1, 8, 8)
    boxes = torch.tensor([[0, 0, 4, 4], [2, 3, 8, 8]])
    probes = Probes(images, boxes=boxes)
    assert torch.equal(Probes.from_state_dict(probes.state_dict()).boxes, boxes)
    for bad in ([[0, 0, 4, 4]], [[0, 0, 9, 4], [0, 0, 1, 1]], [[3, 0, 3, 4], [0, 0, 1, 1]]):
        with pytest.raises(ValueError, match="probe boxes"):
            Probes(images, boxes=torch.tensor(bad))
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 1, 1] = masks[1, 5:, 5:] = True
    kept = Probes.from_state_dict(Probes(images, masks=masks).state_dict())
    assert torch.equal(kept.masks, masks)
    assert kept.regions is kept.masks
    with pytest.raises(ValueError, match="at least one pixel"):
        Probes(images, masks=torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"must have shape \(2, 8, 8\)"):
        Probes(images, masks=masks[:, :4])
    with pytest.raises(ValueError, match="boxes or masks, not both"):
        Probes(images, boxes=boxes, masks=masks)


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


@pytest.mark.slow
def test_the_logged_sanity_scores_reproduce_the_published_direction(tmp_path):
    """Adebayo et al. 2018 through the callbacks: on resnet18 trained on the RGB shapes task,
    Grad-CAM and the signed gradient change when the upper half of the network is re-initialized
    (rank correlation <= 0.3), deconvnet and guided backprop reconstructions stay alike
    (>= 0.5)."""
    images, labels, _ = shapes_task(1200, channels=3)
    probe_images, probe_labels, _ = shapes_task(16, seed=1, channels=3)
    probes = Probes(probe_images, probe_labels)
    torch.manual_seed(0)
    module = Classifier(torchvision.models.resnet18(num_classes=3), lr=0.05)
    common = {"probes": probes, "scores": ["sanity"], "every_n_epochs": 3, "strict": True}
    callbacks = [
        GradCAMLogger(layers=["model.layer3"], **common),
        SaliencyLogger("vanilla", absolute=False, **common),
        DeconvLogger(layers=["model.layer3"], drawn_probes=None, **common),  # all 16 probes
        DeconvLogger(layers=["model.layer4"], rule="guided", drawn_probes=None, **common),
    ]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=3)
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True))
    events = read_events(tmp_path)
    final = {
        name: scalar(events, f"sanity/{name}")[-1]
        for name in (
            "gradcam/model.layer3",
            "saliency/vanilla_signed",
            "deconv/model.layer3",
            "deconv/model.layer4",
        )
    }
    assert {step for step, _ in final.values()} == {trainer.global_step}
    assert final["gradcam/model.layer3"][1] <= 0.3, final
    assert final["saliency/vanilla_signed"][1] <= 0.3, final
    assert final["deconv/model.layer3"][1] >= 0.5, final  # deconvnet
    assert final["deconv/model.layer4"][1] >= 0.5, final  # guided backprop


def test_an_empty_map_gets_no_score_rather_than_a_passing_one(tmp_path):
    """A Grad-CAM map that is 0 everywhere (no positive evidence at the layer) ranks nothing: its
    stability is undefined, not 0.00, which would read as a sanity pass."""
    module = DigitsClassifier()
    last_norm = module.model.features[9]
    with torch.no_grad():  # the layer's output is ReLU(-100): 0 for every probe
        last_norm.weight.zero_()
        last_norm.bias.fill_(-100.0)
    last_norm.requires_grad_(False)
    logger = GradCAMLogger(layers=[LAYER], strict=True)
    fit(module, [logger], tmp_path, epochs=2, limit_train_batches=2)
    events = read_events(tmp_path)
    stability = scalar(events, f"stability/gradcam/{LAYER}")
    assert len(stability) >= 2  # the fit-start render has none: nothing before it
    assert all(math.isnan(value) for _, value in stability)
    text = events.Tensors(f"gradcam/{LAYER}/targets/text_summary")[-1]
    rows = [r for r in text.tensor_proto.string_val[0].decode().splitlines() if r.startswith("| ")]
    column = rows[0].split(" | ").index("stability")
    assert {row.split(" | ")[column] for row in rows[2:]} == {"-"}


def test_stability_resting_on_some_probes_says_on_how_many():
    """A user's segmenter read "stable since epoch 1" from 1 probe of 8, the others' maps
    empty."""
    trainer = type("Trainer", (), {})()  # in its fourth epoch
    RunContext.of(trainer).epoch = 3
    lines = GradCAMLogger()._score_lines(trainer, "gradcam/x", {"stability": 0.95}, 0.0, (1, 8))
    assert lines[0] == (
        "stable since epoch 3 (rank correlation with the previous render 0.95 >= 0.9, over 1 "
        "of 8 probes)."
    )
    lines = GradCAMLogger()._score_lines(trainer, "gradcam/x", {"stability": 0.5}, 0.0, (8, 8))
    assert lines[0] == "not settled: rank correlation with the previous render 0.50 < 0.9."


def test_stability_of_maps_that_are_all_empty_says_so_instead_of_comparing_nan():
    lines = GradCAMLogger()._score_lines(None, "gradcam/x", {"stability": math.nan}, 0.0)
    assert lines[0] == (
        "not settled: every map is empty (one value everywhere) now or at the previous render, "
        "nothing to compare."
    )
