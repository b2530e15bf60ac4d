"""The embedding maths against references: scikit-learn's PCA and k-NN, known scatter pixels."""

import matplotlib
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier

from lightning_viz.functional.embedding import (
    class_colours,
    knn_accuracy,
    pca_2d,
    scatter_image,
    subset_positions,
    value_colours,
)
from lightning_viz.testing import digits_tensors


def test_subset_is_seeded_sorted_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    first = subset_positions(1797, 100, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, subset_positions(1797, 100, seed=3))
    assert not torch.equal(first, subset_positions(1797, 100, seed=4))
    assert len(first) == 100
    assert len(first.unique()) == 100
    assert torch.equal(first, first.sort().values)
    assert first.min() >= 0
    assert first.max() < 1797
    assert torch.equal(subset_positions(40, 100), torch.arange(40))


def test_pca_equals_scikit_learn_signs_included():
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    features[:, 3] *= 5  # a dominant direction
    expected = PCA(n_components=2).fit_transform(features.double().numpy())
    np.testing.assert_allclose(pca_2d(features).numpy(), expected, atol=1e-4)


def test_pca_of_too_few_dimensions_pads_with_zeros():
    points = pca_2d(torch.tensor([[1.0], [2.0], [4.0]]))
    assert points.shape == (3, 2)
    assert torch.equal(points[:, 1], torch.zeros(3))


@pytest.mark.parametrize("k", [1, 3])
def test_knn_accuracy_equals_scikit_learn_leave_one_out(k):
    images, labels = digits_tensors(8)
    features, labels = images[:300].flatten(1) + 0.01, labels[:300]
    keep = labels < 2  # two classes and an odd k: no tied votes
    features, labels = features[keep], labels[keep]
    correct = 0
    for i in range(len(labels)):
        others = torch.arange(len(labels)) != i
        knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
        knn.fit(features[others].numpy(), labels[others].numpy())
        correct += int(knn.predict(features[i : i + 1].numpy())[0] == labels[i])
    assert knn_accuracy(features, labels, k).item() == pytest.approx(correct / len(labels))


def test_knn_accuracy_breaks_ties_for_the_nearest_neighbour():
    # point 0's neighbours: class 1 at distance ~0.1, then class 2: a 1-1 tie at k=2
    features = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.3], [0.0, 1.0]])
    labels = torch.tensor([1, 1, 2, 2])
    votes_for_point_0 = knn_accuracy(features[:3], torch.tensor([1, 1, 2]), k=2)
    assert votes_for_point_0.item() == 1.0  # points 0, 1 right; 2, alone in its class, left out
    assert knn_accuracy(features, labels, k=1).item() == pytest.approx(0.5)


def test_knn_accuracy_leaves_out_images_alone_in_their_class():
    """Six validation images of six classes gave 0%, which looked like features that separate
    nothing: no image had a neighbour of its class to find."""
    features = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    assert knn_accuracy(features, torch.tensor([0, 0, 1, 2]), k=1).item() == 1.0
    assert knn_accuracy(features, torch.tensor([0, 1, 2, 3]), k=1).isnan()


def test_knn_accuracy_is_blind_to_scale():
    features = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(50) % 3
    assert knn_accuracy(features * 100, labels) == knn_accuracy(features, labels)


TAB10 = [[31, 119, 180], [255, 127, 14], [44, 160, 44]]
"""matplotlib's first three ``tab10`` colours."""


def test_each_class_has_its_own_colour_up_to_twenty_then_a_colormap_by_index():
    """tab10 repeated every 10 classes drew a user's 75 classes in 10 colours."""
    assert class_colours([0, 1, 2], 10).tolist() == TAB10
    twenty = class_colours(range(20), 20)
    assert len({tuple(c) for c in twenty.tolist()}) == 20
    # tab20's dark shades first: its own order put each class beside a lighter twin
    dark = [[round(255 * v) for v in c] for c in matplotlib.colormaps["tab20"].colors[0::2]]
    assert twenty[:10].tolist() == dark
    many = class_colours(range(75), 75)
    assert len({tuple(c) for c in many.tolist()}) > 60
    ends = class_colours([0, 74], 75).float()
    assert ends[0, 2] > ends[0, 0]  # turbo: dark blue for the first class
    assert ends[1, 0] > ends[1, 2]  # dark red for the last


def test_a_flat_cloud_is_centred_on_its_narrow_axis():
    """A cloud ten times wider than tall sat along the bottom edge of the card."""
    points = torch.tensor([[0.0, 0.0], [10.0, 1.0]])
    image = scatter_image(points, class_colours([0, 0], 1), size=100, radius=1)
    rows = (image != 255).any(dim=0).any(dim=1).nonzero().flatten()
    assert 40 <= rows.float().mean() <= 60  # around the middle row, not at the bottom


def test_scatter_puts_each_point_where_its_coordinates_say_in_its_class_colour():
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    image = scatter_image(points, class_colours([0, 1, 2], 3), size=100, radius=3)
    assert image.dtype == torch.uint8
    assert image.shape == (3, 100, 100)
    margin = 5  # radius + 2
    # (0, 0) bottom left, (1, 1) top right, (1, 0) bottom right
    assert image[:, 99 - margin, margin].tolist() == TAB10[0]
    assert image[:, margin, 99 - margin].tolist() == TAB10[1]
    assert image[:, 99 - margin, 99 - margin].tolist() == TAB10[2]
    assert image[:, 50, 50].tolist() == [255, 255, 255]
    assert (image != 255).any(dim=0).sum() == 3 * 37  # three discs of radius 3


def test_scatter_draws_later_points_over_earlier_ones():
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    image = scatter_image(points, class_colours([0, 1, 2], 3), size=50)
    assert image[:, 44, 5].tolist() == TAB10[1]


def test_value_colours_spread_the_range_over_viridis():
    viridis = matplotlib.colormaps["viridis"]
    colours = value_colours(torch.tensor([2.0, -1.0, 0.5]))
    expected = [viridis(1.0), viridis(0.0), viridis(128)]  # the middle of its 256 entries
    assert colours.tolist() == [[round(c * 255) for c in rgba[:3]] for rgba in expected]
    assert value_colours(torch.tensor([3.0, 3.0])).tolist() == [colours[2].tolist()] * 2
