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


def test_first_features_are_the_probes_top_channels_once_then_their_next():
    top = torch.tensor([[5, 1], [5, 2], [3, 0], [7, 5]])
    assert first_features(top, 2) == [5, 3]
    assert first_features(top, 3) == [5, 3, 7]
    # two probes share channel 5: the probes' second channels fill the grid's columns
    assert first_features(top, 4) == [5, 3, 7, 1]
    assert first_features(top, 9) == [5, 3, 7, 1, 2, 0]  # all there are


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
    # a feature its probe shows anyway reuses that slot; the others appear once in extra
    # slots, and every other extra slot seeds nothing
    extra = channels[:, 2:]
    not_shown = [f for f, row in zip(features, probe.tolist(), strict=True) if f not in top[row]]
    assert sorted(extra[extra >= 0].tolist()) == sorted(not_shown)
    assert (extra == -1).sum() == extra.numel() - len(not_shown)


def test_a_feature_among_its_probes_top_channels_takes_no_extra_slot():
    activation = torch.zeros(3, 4, 2, 2)
    activation[0, [2, 3]] = torch.tensor([2.0, 1.0])[:, None, None]  # probe 0: top 2, then 3
    activation[1, [0, 1]] = torch.tensor([3.0, 2.5])[:, None, None]  # probe 1: top 0, then 1
    top = top_channels(activation, 1)  # [[2], [0], [...]]
    channels, (probe, slot) = follow_features(activation, top, [2, 0])
    assert channels.shape == (3, 1)  # both shown anyway: no extra column, no extra row
    assert probe.tolist() == [0, 1]
    assert slot.tolist() == [0, 0]
    channels, (probe, slot) = follow_features(activation, top, [2, 3, 1])
    assert channels.shape == (3, 2)  # 3 and 1 are not in their probes' top: one extra column
    assert probe.tolist() == [0, 0, 1]
    assert slot.tolist() == [0, 1, 1]
    assert channels[:, 1].tolist() == [3, 1, -1]


def test_features_sharing_a_probe_take_extra_slots():
    activation = torch.zeros(2, 3, 2, 2)
    activation[0] = torch.tensor([3.0, 2.0, 1.0])[:, None, None]  # probe 0 activates all most
    top = top_channels(activation, 1)
    channels, (probe, slot) = follow_features(activation, top, [0, 1, 2])
    assert probe.tolist() == [0, 0, 0]
    assert slot.tolist() == [0, 1, 2]  # 0 is its top channel; 1 and 2 take extra slots
    assert channels[0].tolist() == [0, 1, 2]
    assert channels[1, 1:].tolist() == [-1, -1]


def test_followed_channel_out_of_range():
    activation = torch.rand(2, 3, 2, 2)
    with pytest.raises(ValueError, match=r"feature channels \[3\] out of range for layer 'conv'"):
        follow_features(activation, top_channels(activation, 1), [3], "conv")
