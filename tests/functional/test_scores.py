"""The trust scores against references: scipy's Spearman, scikit-image's SSIM, known curves."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy.stats import ConstantInputWarning, spearmanr
from skimage.metrics import structural_similarity as skimage_ssim
from torch import nn

from lightning_viz.functional import grad_cam, guided_backprop, relu_rule, saliency, upsample
from lightning_viz.functional.scores import (
    deletion_insertion,
    energy_in_box,
    layers_that_run,
    map_similarity,
    map_structural_similarity,
    pointing_game,
    random_maps,
    randomized_call,
    randomized_copy,
    randomized_forward,
    randomized_parameters,
    rank_correlation,
    region_masks,
    structural_similarity,
    upper_half,
)
from lightning_viz.testing import DigitsCNN, shapes_task
from tests.helpers import hook_count


def test_rank_correlation_equals_scipy_ties_included():
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(5, 7, 7, generator=generator)
    second = first + torch.randn(5, 7, 7, generator=generator)
    first[:, :3] = 0.0  # ties, as a ReLU'd map has
    second[2] = second[2].round()
    expected = [
        spearmanr(a.flatten(), b.flatten()).statistic for a, b in zip(first, second, strict=True)
    ]
    np.testing.assert_allclose(rank_correlation(first, second).numpy(), expected, atol=1e-6)


def test_rank_correlation_of_a_constant_map_is_undefined_and_shapes_must_agree():
    maps = torch.rand(2, 4, 4)
    constant = torch.zeros(2, 4, 4)
    assert rank_correlation(maps, constant).isnan().all()  # as scipy's spearmanr
    with pytest.warns(ConstantInputWarning):
        assert np.isnan(spearmanr(maps[0].flatten(), constant[0].flatten())[0])
    assert torch.allclose(rank_correlation(maps, maps * 3 + 1), torch.ones(2))
    # as a score: an empty rated map has none; an empty reference is a change (0)
    assert map_similarity(constant, maps).isnan().all()
    assert torch.equal(map_similarity(maps, constant), torch.zeros(2))
    assert torch.equal(map_similarity(maps, maps), rank_correlation(maps, maps))
    with pytest.raises(ValueError, match="differ"):
        rank_correlation(maps, torch.zeros(2, 4, 5))


def test_structural_similarity_equals_scikit_image():
    generator = torch.Generator().manual_seed(1)
    first = torch.rand(3, 32, 32, generator=generator)
    second = first * 0.5 + torch.rand(3, 32, 32, generator=generator)
    found = structural_similarity(first, second)
    for i in range(3):
        a, b = (m[i].double().numpy() for m in (first, second))
        a = (a - a.min()) / (a.max() - a.min())
        b = (b - b.min()) / (b.max() - b.min())
        expected = skimage_ssim(
            a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert found[i].item() == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(structural_similarity(first, first), torch.ones(3), atol=1e-6)
    # as a score: two empty maps are not "alike", there is nothing to score (a user's Grad-CAM
    # had 5 empty maps of 10, each counted as SSIM 1.00 in the sanity mean)
    empty = torch.zeros(3, 32, 32)
    assert structural_similarity(empty, empty).tolist() == [1.0, 1.0, 1.0]
    assert map_structural_similarity(empty, empty).isnan().all()
    assert torch.equal(map_structural_similarity(first, second), found)
    with pytest.raises(ValueError, match="at least 11x11"):
        structural_similarity(torch.rand(1, 7, 7), torch.rand(1, 7, 7))


def test_a_randomized_copy_cascades_from_the_top_and_leaves_model_and_rng_alone():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    with torch.no_grad():  # a BatchNorm that learned something
        model.features[9].weight.uniform_(0.5, 2.0)
        model.features[9].running_mean.uniform_(-1.0, 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    top = randomized_copy(model, modules=2, seed=3)  # the head and the last BatchNorm
    assert torch.equal(torch.random.get_rng_state(), state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # the ones that differ from their reset value: BatchNorm resets to weight 1, mean 0
    changed = {k for k, v in top.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.weight", "head.bias", "features.9.weight", "features.9.running_mean"}
    assert torch.equal(top.features[9].weight, torch.ones(64))
    assert torch.equal(top.features[8].weight, model.features[8].weight)  # below: untouched
    again = randomized_copy(model, modules=2, seed=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in top.state_dict().items())
    everything = randomized_copy(model)
    assert not torch.equal(everything.features[0].weight, model.features[0].weight)


class Linear(nn.Module):
    """Logits (s, -s) with s = sum(w * x): the class-0 evidence of each pixel is w * x."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        score = (x * self.weight).flatten(1).sum(dim=1)
        return torch.stack([score, -score], dim=1)


def test_deletion_falls_faster_for_the_true_evidence_than_for_a_random_order():
    generator = torch.Generator().manual_seed(2)
    weight = torch.rand(1, 1, 8, 8, generator=generator) * 0.3
    model = Linear(weight).eval()
    images = torch.rand(4, 1, 8, 8, generator=generator)
    evidence = (images * weight)[:, 0]
    curves = deletion_insertion(model, images, evidence, targets=0, steps=8, max_batch=5)
    random = deletion_insertion(model, images, random_maps(evidence), targets=0, steps=8)
    # the ends: the whole image, and the baseline (score 0: probability 1/2)
    full = (images * weight).flatten(1).sum(dim=1)
    assert torch.allclose(curves.deletion[:, 0], torch.sigmoid(2 * full), atol=1e-6)
    assert torch.allclose(curves.deletion[:, -1], torch.full((4,), 0.5))
    assert torch.allclose(curves.insertion[:, -1], curves.deletion[:, 0])
    # the evidence's order is the fastest fall: every deletion step at or below the random one's
    assert (curves.deletion <= random.deletion + 1e-6).all()
    assert (curves.deletion_auc < random.deletion_auc).all()
    assert (curves.insertion_auc > random.insertion_auc).all()
    assert torch.all(curves.deletion[:, 1:] <= curves.deletion[:, :-1] + 1e-6)  # monotone


class PixelSegmenter(nn.Module):
    """Per-pixel logits (0, 20 x - 10): class 1 where a pixel's value is above 1/2."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 20 * x - 10], dim=1)


def test_a_segmentation_reads_its_class_over_the_pixels_the_probe_predicts_as_it():
    """The class's probability of the whole image (a softmax over sums of thousands of pixel
    scores) stayed at 1 or 0; a score over the pixels each perturbed image predicts as the class
    jumped as they changed. Read over the probe's own pixels of the class, deleting them lowers
    it in step."""
    images = torch.zeros(2, 1, 4, 4)
    images[0, :, :2, :2] = 1.0  # 4 of 16 pixels are class 1; image 1 has none
    order = torch.arange(16.0).flip(0).view(1, 4, 4).repeat(2, 1, 1)  # row-major
    curves = deletion_insertion(
        PixelSegmenter(), images, order, targets=1, steps=16, segmentation=True
    )
    kept, gone = torch.sigmoid(torch.tensor(10.0)), torch.sigmoid(torch.tensor(-10.0))
    # row-major deletion takes (0, 0) and (0, 1) at steps 1 and 2, then (1, 0) and (1, 1) at 5, 6
    deleted = torch.tensor([0, 1, 2, 2, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]).float()
    expected = (deleted * gone + (4 - deleted) * kept) / 4
    torch.testing.assert_close(curves.deletion[0], expected)
    # no pixel of the class on image 1: its mean over every pixel, which nothing deleted raises
    torch.testing.assert_close(curves.deletion[1], gone.expand(17))
    whole = deletion_insertion(PixelSegmenter(), images, order, targets=1, steps=16)
    # read as the image's class probability, 3 of the 4 pixels deleted change nothing
    assert whole.deletion[0, 5] > 0.99
    assert curves.deletion[0, 5] < 0.26
    # a binary segmenter of one sigmoid output: its class's pixels are those scored positive
    binary = deletion_insertion(
        lambda x: PixelSegmenter()(x)[:, 1:], images, order, targets=0, steps=16,
        probabilities="sigmoid", segmentation=True,
    )  # fmt: skip
    torch.testing.assert_close(binary.deletion[0], expected)
    with pytest.raises(ValueError, match=r"needs a model output of per-pixel class scores"):
        deletion_insertion(
            Linear(torch.ones(1, 1, 4, 4)), images, order, targets=0, segmentation=True
        )


def test_deletion_checks_the_maps_shape():
    model = Linear(torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"`maps` must have shape \(2, 4, 4\)"):
        deletion_insertion(model, torch.rand(2, 1, 4, 4), torch.rand(2, 2, 2))


def test_pointing_game_and_energy_in_box():
    maps = torch.zeros(2, 6, 6)
    maps[0, 1, 1] = 3.0  # peak inside the box, all its energy too
    maps[1, 5, 5], maps[1, 2, 2] = 2.0, 2.0  # the first peak (row-major) is (2, 2): inside
    maps[1, 0, 5] = -9.0  # negative values carry no energy
    boxes = torch.tensor([[0, 0, 3, 3], [2, 2, 4, 4]])
    assert pointing_game(maps, boxes).tolist() == [1.0, 1.0]
    assert energy_in_box(maps, boxes).tolist() == [1.0, 0.5]
    assert pointing_game(maps, torch.tensor([[3, 3, 6, 6], [0, 0, 1, 1]])).tolist() == [0.0, 0.0]
    assert energy_in_box(torch.zeros(1, 6, 6), boxes[:1]).isnan().all()
    assert pointing_game(torch.zeros(1, 6, 6), boxes[:1]).isnan().all()  # no peak to point


def test_masks_score_as_the_boxes_they_draw_and_shapes_a_box_cannot():
    torch.manual_seed(0)
    maps = torch.randn(5, 9, 7)
    boxes = torch.tensor([[0, 0, 3, 3], [2, 1, 9, 7], [4, 4, 5, 5], [1, 2, 8, 3], [0, 0, 9, 7]])
    masks = region_masks(boxes, (9, 7))
    assert masks.dtype == torch.bool
    assert masks.sum(dim=(1, 2)).tolist() == [9, 42, 1, 7, 63]
    assert torch.equal(pointing_game(maps, masks), pointing_game(maps, boxes))
    torch.testing.assert_close(energy_in_box(maps, masks), energy_in_box(maps, boxes))
    ring = torch.ones(1, 9, 7, dtype=torch.bool)
    ring[0, 2:7, 2:5] = False  # a hollow object: no box holds its outline without its middle
    centre = torch.zeros(1, 9, 7)
    centre[0, 4, 3] = 1.0
    assert pointing_game(centre, ring).item() == 0.0
    assert pointing_game(centre, torch.tensor([[0, 0, 9, 7]])).item() == 1.0
    with pytest.raises(ValueError, match="do not match maps"):
        pointing_game(maps, masks[:, :8])


@pytest.fixture(scope="module")
def trained_resnet():
    """resnet18 trained 3 epochs on the RGB shapes task (all 16 probes right), and its probes."""
    images, labels, _ = shapes_task(1200, channels=3)
    probes, probe_labels, _ = shapes_task(16, seed=1, channels=3)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        model.train()
        for batch in torch.randperm(1200).split(32):
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        assert (model(probes).argmax(dim=1) == probe_labels).all()
    return model, probes, probe_labels


def explanations(model, probes, labels) -> dict[str, torch.Tensor]:
    maps = {"gradcam": upsample(grad_cam(model, probes, "layer3", labels)["layer3"], (32, 32))}
    maps["gradient"] = saliency(model, probes, labels, absolute=False).sum(dim=1)
    maps["guided backprop"] = guided_backprop(model, probes, labels).abs().amax(dim=1)
    with relu_rule("deconvnet"):
        maps["deconvnet"] = saliency(model, probes, labels).amax(dim=1)
    return maps


@pytest.mark.slow
def test_randomization_reproduces_the_published_direction(trained_resnet):
    """Adebayo et al. 2018: Grad-CAM and gradients depend on the learned weights, guided
    backprop and deconvnet barely (randomized from the top down through the upper half of the
    parametrized layers: layer3, layer4 and fc of a resnet18)."""
    model, probes, labels = trained_resnet
    randomized = randomized_copy(model, modules=upper_half(model), seed=1).eval()
    trained, random = explanations(model, probes, labels), explanations(randomized, probes, labels)
    similarity = {name: map_similarity(trained[name], random[name]).nanmean() for name in trained}
    assert similarity["gradcam"] <= 0.3, similarity
    assert similarity["gradient"] <= 0.3, similarity
    assert similarity["guided backprop"] >= 0.5, similarity
    assert similarity["deconvnet"] >= 0.5, similarity


@pytest.mark.slow
def test_grad_cam_deletes_the_evidence_first_on_the_trained_model_only(trained_resnet):
    model, probes, labels = trained_resnet
    for network, faithful in ((model, True), (randomized_copy(model, seed=1).eval(), False)):
        maps = upsample(grad_cam(network, probes, "layer3", labels)["layer3"], (32, 32))
        ranked = deletion_insertion(network, probes, maps, labels).deletion_auc.mean()
        unranked = deletion_insertion(
            network, probes, random_maps(maps), labels
        ).deletion_auc.mean()
        if faithful:
            assert ranked < unranked - 0.1, (ranked, unranked)
        else:  # a map of a random network ranks nothing: no faster than a random order
            assert ranked > unranked - 0.02, (ranked, unranked)


def test_a_randomized_forward_equals_the_copy_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    images = torch.rand(2, 3, 32, 32)
    parameters = [id(p) for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = model(images)
    seen = []
    handle = model.layer3.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    try:
        randomized = randomized_forward(model, modules=21, seed=1)(images)
    finally:
        handle.remove()
    assert len(seen) == 1  # hooks on the model's own modules fire in the randomized pass
    torch.testing.assert_close(randomized, randomized_copy(model, 21, seed=1)(images))
    assert [id(p) for p in model.parameters()] == parameters  # an optimizer's references hold
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(images), plain)


def test_a_randomized_call_sees_the_copy_s_weights_and_restores_the_model_even_on_error():
    """CAM reads the classifier's weights outside the forward: inside the call they are the
    randomized ones; afterwards, and after an exception, the model's own."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    images = torch.rand(2, 3, 32, 32)
    weight = model.fc.weight
    copy = randomized_copy(model, modules=2, seed=3)
    seen = randomized_call(model, lambda: (model.fc.weight.clone(), model(images)), 2, seed=3)
    torch.testing.assert_close(seen[0], copy.fc.weight)
    torch.testing.assert_close(seen[1], copy(images))
    assert model.fc.weight is weight

    def failing():
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        randomized_call(model, failing, 2)
    assert model.fc.weight is weight
    assert not torch.equal(weight, copy.fc.weight)


def test_the_upper_half_is_the_top_of_what_runs_not_of_the_definition_order():
    """A head defined before its backbone is still the top; a part the forward does not run (a
    GAN's generator under its discriminator's forward) is left out."""

    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)
            self.body = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
            self.unused = nn.Linear(3, 3)

        def forward(self, x):
            return self.head(self.body(x).mean(dim=(2, 3)))

    model = HeadFirst().eval()
    images = torch.rand(1, 1, 8, 8)
    assert layers_that_run(model, images) == ["body.0", "body.1", "head"]
    assert upper_half(model, images) == ["body.1", "head"]
    assert upper_half(model) == ["body.1", "unused"]  # definition order, without a forward
    body_only = upper_half(model, images, forward=lambda x: model.body(x))
    assert body_only == ["body.1"]
    replaced = randomized_parameters(model, upper_half(model, images))
    assert sorted(replaced) == [
        "body.1.bias",
        "body.1.num_batches_tracked",
        "body.1.running_mean",
        "body.1.running_var",
        "body.1.weight",
        "head.bias",
        "head.weight",
    ]
    assert hook_count(model) == 0
    with pytest.raises(ValueError, match=r"not such: \['body.2'\]"):
        randomized_parameters(model, ["head", "body.2"])
