import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from lightning_viz import Probes
from tests.helpers import segmentation_data


def labelled_loader(shuffle: bool) -> DataLoader:
    images = torch.arange(40, dtype=torch.float32).view(40, 1, 1, 1).expand(40, 1, 4, 4).clone()
    labels = torch.tensor([3, 3, 1, 1, 0, 2, 0, 4] * 5)
    return DataLoader(TensorDataset(images, labels), batch_size=8, shuffle=shuffle)


def test_from_dataloader_puts_one_image_per_class_first():
    probes = Probes.from_dataloader(labelled_loader(shuffle=False), n=7)
    assert probes.labels.tolist() == [0, 1, 2, 3, 4, 3, 1]
    assert probes.images[:, 0, 0, 0].tolist() == [4, 2, 5, 0, 7, 1, 3]


def test_from_dataloader_is_deterministic_and_leaves_every_rng_alone():
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    states = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    first = Probes.from_dataloader(labelled_loader(shuffle=True), n=6)
    second = Probes.from_dataloader(labelled_loader(shuffle=True), n=6)
    assert torch.equal(first.images, second.images)
    assert torch.equal(torch.random.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_from_dataloader_leaves_the_loaders_own_generator_alone():
    generator = torch.Generator().manual_seed(3)
    loader = labelled_loader(shuffle=False)
    loader = DataLoader(loader.dataset, batch_size=8, shuffle=True, generator=generator)
    before = generator.get_state()
    probes = Probes.from_dataloader(loader, n=5)
    assert torch.equal(generator.get_state(), before)
    assert probes.labels.tolist() == [0, 1, 2, 3, 4]  # dataset order, whatever the shuffle


def test_default_display_is_normalized_rgb():
    images = torch.randn(3, 1, 5, 5) * 10
    probes = Probes(images)
    assert probes.display.shape == (3, 3, 5, 5)
    for display in probes.display:
        assert display.min() == 0
        assert display.max() == pytest.approx(1.0)
    assert Probes(torch.randn(2, 4, 5, 5)).display.shape == (2, 3, 5, 5)


def test_state_round_trip_loads_with_weights_only(tmp_path):
    probes = Probes(torch.randn(2, 3, 4, 4), torch.tensor([1, 0]), multi_label=True)
    torch.save(probes.state_dict(), tmp_path / "probes.pt")
    restored = Probes.from_state_dict(torch.load(tmp_path / "probes.pt", weights_only=True))
    assert torch.equal(restored.images, probes.images)
    assert torch.equal(restored.labels, probes.labels)
    assert torch.equal(restored.display, probes.display)
    assert restored.multi_label
    assert restored.values is None
    assert not Probes.from_state_dict(Probes(torch.randn(1, 3, 4, 4)).state_dict()).multi_label
    regression = Probes(torch.randn(2, 3, 4, 4), values=torch.tensor([0.5, -2.0]))
    torch.save(regression.state_dict(), tmp_path / "regression.pt")
    state = torch.load(tmp_path / "regression.pt", weights_only=True)
    assert Probes.from_state_dict(state).values.tolist() == [0.5, -2.0]


@pytest.mark.parametrize("as_column", [False, True])
def test_float_targets_pick_probes_spread_over_their_range_with_their_values(as_column):
    """A regressor's probes were the first 8 images, unlabelled: captions could not say
    what each one's output should be."""
    targets = torch.linspace(0, 1, 40)[
        torch.randperm(40, generator=torch.Generator().manual_seed(0))
    ]
    images = targets.view(40, 1, 1, 1).expand(40, 1, 2, 2)
    column = targets[:, None] if as_column else targets
    loader = DataLoader(TensorDataset(images, column), batch_size=5)
    probes = Probes.from_dataloader(loader, n=4)  # from 4 x 4 images: 4 batches of 5
    ranked = targets[:20].sort().values
    assert probes.values.tolist() == ranked[[0, 6, 13, 19]].tolist()
    assert torch.equal(probes.images[:, 0, 0, 0], probes.values)
    assert probes.labels is None
    assert "with values" in repr(probes)
    # under a dict's label key too; a target with a NaN is none
    dicts = [{"image": images[:5], "target": targets[:5]}]
    assert (
        Probes.from_dataloader(dicts, n=2).values.tolist()
        == targets[:5].sort().values[[0, 4]].tolist()
    )
    broken = [(images[:5], torch.full((5,), float("nan")))]
    assert Probes.from_dataloader(broken, n=2).values is None
    # from batch_to_images too: float targets there failed the fit ("integer class indices")
    ages = [{"img": images[:5], "age": targets[:5]}]
    given = Probes.from_dataloader(ages, n=2, batch_to_images=lambda b: (b["img"], b["age"]))
    assert given.values.tolist() == targets[:5].sort().values[[0, 4]].tolist()
    with pytest.raises(ValueError, match=r"float targets of shape \(5, 2\) for 5 images"):
        Probes.from_dataloader(ages, batch_to_images=lambda b: (b["img"], b["img"][:, 0, 0]))


def test_multi_hot_targets_pick_per_class_the_clearest_image_it_is_on():
    targets = torch.tensor(
        [[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 1], [0, 0, 1], [0, 1, 0]], dtype=torch.float32
    )
    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 2, 2)
    probes = Probes.from_dataloader(DataLoader(TensorDataset(images, targets), batch_size=3))
    # class 0: image 1 (alone) before image 0 (two on); class 1: image 5; class 2: image 4;
    # then the rest in order for their first class; image 2 has none on: left out
    assert probes.images[:, 0, 0, 0].tolist() == [1, 5, 4, 0, 3]
    assert probes.labels.tolist() == [0, 1, 2, 0, 1]
    assert probes.multi_label
    labels = Probes.from_dataloader(DataLoader(TensorDataset(images, torch.arange(6)), 3))
    assert not labels.multi_label
    # images with every class on: the rest go round the classes (each for its first class,
    # half a user's probes explained class 0)
    every = Probes.from_dataloader(DataLoader(TensorDataset(images, torch.ones(6, 3)), 3))
    assert every.labels.tolist() == [0, 1, 2, 0, 1, 2]
    # one-hot targets are a single-label classifier's: labels, read through a softmax
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 0, 1, 0, 2, 1]), 3).float()
    single = Probes.from_dataloader(DataLoader(TensorDataset(images, one_hot), 3))
    assert single.labels.tolist() == [0, 1, 2, 0, 2, 1]  # one image per class first
    assert not single.multi_label


def test_from_files(tmp_path):
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (6, 4), colour).save(path)
        paths.append(path)

    def transform(image):
        return torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255

    probes = Probes.from_files(paths, transform, labels=[0, 1])
    assert probes.images.shape == (2, 3, 4, 6)
    assert probes.images[0, 0].mean() == 1
    assert probes.images[1, 2].mean() == 1
    assert probes.labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": torch.randn(3, 4, 4)}, r"\(N, C, H, W\) tensor, got \(3, 4, 4\)"),
        ({"images": torch.zeros(2, 1, 4, 4, dtype=torch.long)}, "floating point"),
        ({"labels": torch.tensor([1, 2, 3])}, r"2 integer class indices, got shape \(3,\)"),
        ({"labels": torch.tensor([0.5, 1.0])}, "integer class indices"),
        ({"display": torch.rand(2, 3, 5, 5)}, r"RGB of shape \(2, 3, 4, 4\).*got \(2, 3, 5, 5\)"),
        ({"display": torch.rand(2, 3, 4, 4) * 2}, r"lie in \[0, 1\]"),
        ({"values": torch.tensor([1, 2])}, r"2 finite floats .* got shape \(2,\) torch.int64"),
        ({"values": torch.tensor([0.5, float("inf")])}, "finite floats"),
        ({"values": torch.rand(2, 1)}, r"got shape \(2, 1\)"),
    ],
)
def test_bad_probes(kwargs, message):
    arguments = {"images": torch.randn(2, 1, 4, 4), **kwargs}
    with pytest.raises(ValueError, match=message):
        Probes(**arguments)


def test_batches_without_images_are_rejected():
    with pytest.raises(ValueError, match="cannot find"):
        Probes.from_dataloader([["not", "images"]], n=2)
    with pytest.raises(ValueError, match="`n` must be a positive integer"):
        Probes.from_dataloader(labelled_loader(False), n=0)


@pytest.mark.parametrize(
    ("shape", "said"),
    [
        (
            (8, 16, 20),
            r"1-D signals \(N, C, L\) are not supported; grey images .*batch\[0\]\[:, None\]",
        ),
        (
            (8, 2, 64),
            r"1-D signals \(N, C, L\) are not supported; FilterMonitor still reads the model's "
            "conv weights$",
        ),
        ((8, 1, 256), r"are not supported; FilterMonitor still reads the model's conv weights"),
        ((8, 1, 4, 16, 16), r"3-D volumes \(N, C, D, H, W\) are not supported; FilterMonitor"),
    ],
)
def test_signals_and_volumes_are_told_apart_from_grey_images_without_channels(shape, said):
    """The advice "pass batch_to_images=" followed "1-D signals and 3-D volumes are not
    supported", which no batch_to_images makes images; a signal of 1 or 2 rows, or many times
    longer than it is high, got the advice for grey images, which led a user's Conv1d net to
    "the model cannot run on the first probe, of shape (1, 1, 1, 256)"."""
    batch = [torch.randn(shape), torch.zeros(8, dtype=torch.long)]
    with pytest.raises(ValueError, match=said):
        Probes.from_dataloader([batch])
    grey = [torch.randn(8, 16, 16), torch.zeros(8, dtype=torch.long)]
    probes = Probes.from_dataloader([grey], batch_to_images=lambda b: (b[0][:, None], b[1]))
    assert probes.images.shape == (8, 1, 16, 16)


def test_images_and_labels_are_found_in_dict_batches_by_shape():
    images = torch.rand(6, 3, 8, 8)
    labels = torch.tensor([2, 0, 1, 0, 1, 2])
    batches = [
        {"img": images[:3], "cls": labels[:3], "name": ["a"] * 3},
        {"img": images[3:], "cls": labels[3:], "name": ["b"] * 3},
    ]
    probes = Probes.from_dataloader(batches, n=3)
    assert probes.labels.tolist() == [0, 1, 2]
    assert torch.equal(probes.images, images[[1, 2, 0]])
    uint8 = Probes.from_dataloader([{"pixels": (images * 255).to(torch.uint8)}], n=2)
    assert uint8.images.dtype == torch.uint8
    assert uint8.labels is None


def test_batch_to_images_reads_any_batch():
    batches = [{"audio": torch.zeros(3), "frames": (torch.rand(4, 3, 8, 8), torch.arange(4))}]
    probes = Probes.from_dataloader(batches, n=2, batch_to_images=lambda b: b["frames"])
    assert probes.images.shape == (2, 3, 8, 8)
    assert probes.labels.tolist() == [0, 1]
    only_images = Probes.from_dataloader(batches, n=2, batch_to_images=lambda b: b["frames"][0])
    assert only_images.labels is None
    with pytest.raises(ValueError, match=r"batch_to_images must return \(N, C, H, W\) images"):
        Probes.from_dataloader(batches, n=2, batch_to_images=lambda b: b["audio"])


def test_segmentation_masks_pick_each_class_where_it_is_largest_with_its_mask():
    images, masks = segmentation_data()
    probes = Probes.from_dataloader(DataLoader(TensorDataset(images, masks), batch_size=8))
    assert len(probes) == 8  # 3 classes besides the background: at least 8
    assert probes.labels[:3].tolist() == [1, 2, 3]  # never the background, nor 255
    covered = (masks == probes.labels[0]).flatten(1).sum(dim=1)
    first = int((probes.images[0] == images).flatten(1).all(dim=1).nonzero())
    assert covered[first] == covered.max()  # class 1 where it covers most
    for i in range(len(probes)):
        index = int((probes.images[i] == images).flatten(1).all(dim=1).nonzero())
        assert torch.equal(probes.masks[i], masks[index] == probes.labels[i])
    as_dicts = [{"image": images[i : i + 8], "mask": masks[i : i + 8]} for i in (0, 8, 16)]
    assert torch.equal(Probes.from_dataloader(as_dicts).labels, probes.labels)


def test_integer_images_and_targets_that_are_no_class_ids_are_no_masks():
    grey = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    assert Probes.from_dataloader([{"image": grey}]).labels is None  # the images themselves
    depth = torch.randint(0, 60000, (8, 16, 16), dtype=torch.int32)  # a depth map, in mm
    assert Probes.from_dataloader([(torch.rand(8, 3, 16, 16), depth)]).labels is None
    ignored = torch.full((8, 16, 16), 255)
    assert Probes.from_dataloader([(torch.rand(8, 3, 16, 16), ignored)]).labels is None


class TransformedImages(torch.utils.data.Dataset):
    """Images in [0, 1] through a torchvision transform, as a torchvision dataset has them."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(self.images[index]), self.labels[index]


@pytest.mark.parametrize(("subset", "preset"), [(False, False), (True, False), (False, True)])
def test_probes_of_normalized_images_are_shown_as_they_were_before(subset, preset):
    """A user's ImageNet-normalized probes, min-max normalized for display: a near-white sky
    read saturated blue, a dark teal flower bright cyan. ``preset``: the transform torchvision's
    pretrained weights give (``ResNet18_Weights.DEFAULT.transforms()``), which normalizes
    without a ``Normalize`` in it."""
    from torchvision import transforms
    from torchvision.transforms._presets import ImageClassification

    torch.manual_seed(0)
    raw = torch.rand(12, 3, 8, 8) * torch.tensor([0.1, 0.5, 0.9])[:, None, None] + 0.05
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transform = (
        ImageClassification(crop_size=8, resize_size=8)
        if preset
        else transforms.Compose([transforms.Normalize(mean, std)])
    )
    dataset = TransformedImages(raw, torch.arange(12) % 4, transform)
    if subset:
        dataset = torch.utils.data.Subset(dataset, range(12))
    probes = Probes.from_dataloader(DataLoader(dataset, batch_size=4))
    normalized = torch.stack([dataset[i][0] for i in range(12)])
    for image, display in zip(probes.images, probes.display, strict=True):
        (index,) = [i for i in range(12) if torch.equal(normalized[i], image)]
        assert torch.allclose(display, raw[index], atol=1e-6)
    without = TransformedImages(raw, torch.arange(12) % 4, transforms.Compose([]))
    plain = Probes.from_dataloader(DataLoader(without, batch_size=4))
    assert plain.display.amax(dim=(1, 2, 3)).eq(1).all()  # min-max normalized, as before
