import pytest
import torch

from lightning_viz.functional import top_channels
from lightning_viz.functional.selection import evenly_spaced, first_features, follow_features


def test_evenly_spaced_keeps_the_ends():
    assert evenly_spaced(3, 5) == [0, 1, 2]
    assert evenly_spaced(10, 4) == [0, 3, 6, 9]
    assert evenly_spaced(17, 16)[0] == 0
    assert evenly_spaced(17, 16)[-1] == 16
    assert len(set(evenly_spaced(17, 16))) == 16


def test_first_features_are_each_probes_top_channel_once():
    top = torch.tensor([[5, 1], [5, 2], [3, 0], [7, 5]])
    assert first_features(top, 3) == [5, 3]
    assert first_features(top, 4) == [5, 3, 7]


def test_followed_features_go_to_the_probe_that_activates_them_most():
    activation = torch.rand(4, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    top = top_channels(activation, 2)
    features = [1, 4, 5]
    channels, (probe, slot) = follow_features(activation, top, features)
    assert torch.equal(channels[:, :2], top)
    strength = activation.sum(dim=(2, 3))
    for feature, row, column in zip(features, probe.tolist(), slot.tolist(), strict=True):
        assert row == int(strength[:, feature].argmax())  # brute force
        assert channels[row, column] == feature
    # every followed feature appears exactly once in the extra slots; the rest seed nothing
    extra = channels[:, 2:]
    assert sorted(extra[extra >= 0].tolist()) == features
    assert (extra == -1).sum() == extra.numel() - len(features)


def test_features_sharing_a_probe_take_extra_slots():
    activation = torch.zeros(2, 3, 2, 2)
    activation[0] = 1.0  # probe 0 activates every channel most
    top = top_channels(activation, 1)
    channels, (probe, slot) = follow_features(activation, top, [0, 1, 2])
    assert probe.tolist() == [0, 0, 0]
    assert slot.tolist() == [1, 2, 3]
    assert channels[1, 1:].tolist() == [-1, -1, -1]


def test_followed_channel_out_of_range():
    activation = torch.rand(2, 3, 2, 2)
    with pytest.raises(ValueError, match=r"feature channels \[3\] out of range for layer 'conv'"):
        follow_features(activation, top_channels(activation, 1), [3], "conv")
