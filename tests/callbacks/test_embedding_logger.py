"""EmbeddingLogger through a real Trainer: the projector files, the scatter, the k-NN scalar."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format
from pytorch_lightning.callbacks import ModelCheckpoint
from tensorboard.plugins.projector import projector_plugin
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from lightning_viz import EmbeddingLogger, TopPatchesLogger
from lightning_viz._compat import add_embedding
from lightning_viz.functional.captions import footnote
from lightning_viz.functional.embedding import knn_accuracy, subset_positions, value_colours
from lightning_viz.testing import DigitsCNN, ImageClassifier, digits_loaders, sequential_cnn
from tests.callbacks.test_neutrality import assert_same_training, train
from tests.helpers import (
    DigitsClassifier,
    fit,
    hook_count,
    image_pixels,
    make_trainer,
    read_events,
)
from tests.test_probes import TransformedImages

TAG = "embedding/model.head"
VALIDATION_SIZE = 360


def projector_entries(log_dir, header="class\tposition"):
    """The projector's embeddings as TensorBoard reads them: (step, features, metadata rows)."""
    config = text_format.Parse((log_dir / "projector_config.pbtxt").read_text(), ProjectorConfig())
    entries = []
    for embedding in config.embeddings:
        assert embedding.tensor_name.startswith(TAG + ":")
        features = projector_plugin._read_tensor_tsv_file(str(log_dir / embedding.tensor_path))
        lines = (log_dir / embedding.metadata_path).read_text().splitlines()
        assert lines[0] == header
        sprite = log_dir / embedding.sprite.image_path
        assert sprite.exists()
        assert list(embedding.sprite.single_image_dim) == [32, 32]
        step = int(embedding.tensor_name.split(":")[1])
        entries.append((step, features, [line.split("\t") for line in lines[1:]]))
    return sorted(entries, key=lambda entry: entry[0])


def head_inputs(module, images):
    """The input of ``module.model.head`` on ``images``, in eval mode."""
    found = []
    handle = module.model.head.register_forward_pre_hook(lambda m, args: found.append(args[0]))
    module.eval()
    try:
        with torch.no_grad():
            module(images)
    finally:
        handle.remove()
    return found[0]


def test_the_same_subset_every_epoch_with_the_final_models_features(tmp_path):
    logger = EmbeddingLogger(num_images=100, strict=True)
    module = DigitsClassifier("sgd", 0.05)
    trainer = fit(module, [logger], tmp_path, epochs=3)
    entries = projector_entries(tmp_path)
    assert [step for step, _, _ in entries] == [23, 46, 69]  # every validation epoch's end
    positions = subset_positions(VALIDATION_SIZE, 100).tolist()
    _, val = digits_loaders()
    images, labels = val.dataset.tensors
    for _, features, rows in entries:
        assert [int(p) for _, p in rows] == positions  # the same images, in stream order
        assert [int(c) for c, _ in rows] == labels[positions].tolist()
        assert features.shape == (100, 64)
    expected = head_inputs(module, images[positions])
    np.testing.assert_allclose(entries[-1][1], expected.numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(entries[0][1], entries[-1][1], atol=1e-2)  # the features learn
    events = read_events(tmp_path)
    knn = [s.value for s in events.Scalars(f"{TAG}/knn_accuracy")]
    assert [s.step for s in events.Scalars(f"{TAG}/knn_accuracy")] == [23, 46, 69]
    assert knn[-1] == pytest.approx(knn_accuracy(expected, labels[positions]).item(), abs=1e-6)
    assert knn[-1] > 0.8  # the digits separate after three epochs
    scatters = events.Images(TAG)
    assert [e.step for e in scatters] == [23, 46, 69]
    pixels = image_pixels(scatters[-1])
    assert pixels.shape[1] == 350  # as wide as TensorBoard's card
    tab10_blue = np.array([31, 119, 180])
    assert (np.abs(pixels[..., :3].astype(int) - tab10_blue).sum(-1) == 0).sum() > 100
    assert hook_count(module) == 0
    assert trainer.callback_metrics  # training went on


def test_every_validation_image_below_num_images_and_every_n_epochs(tmp_path):
    fit(DigitsClassifier(), [EmbeddingLogger(every_n_epochs=2, strict=True)], tmp_path, epochs=2)
    entries = projector_entries(tmp_path)
    assert [step for step, _, _ in entries] == [46]
    assert [int(p) for _, p in entries[0][2]] == list(range(VALIDATION_SIZE))


def test_one_entry_per_epoch_however_often_the_trainer_validates(tmp_path):
    """val_check_interval=0.25 runs four validations an epoch: each made an entry (a directory
    of tensors and sprites), and in the last epoch each bypassed the budget."""
    views = [EmbeddingLogger(strict=True), TopPatchesLogger(strict=True)]
    fit(DigitsClassifier(), views, tmp_path, epochs=2, val_check_interval=0.25)
    assert [step for step, _, _ in projector_entries(tmp_path)] == [5, 28]
    patches = [tag for tag in read_events(tmp_path).Tags()["images"] if tag.startswith("top")]
    assert patches
    for tag in patches:
        assert [e.step for e in read_events(tmp_path).Images(tag)] == [5, 28]


def test_embedding_leaves_training_bit_identical(tmp_path):
    without = train(tmp_path / "without", [])
    with_logger = train(tmp_path / "with", [EmbeddingLogger(strict=True)])
    assert_same_training(without, with_logger)


def test_no_knn_accuracy_where_no_class_has_two_images(tmp_path):
    """A user's six validation images of six classes gave a k-NN accuracy of 0%."""
    train_loader, val = digits_loaders()
    images, labels = val.dataset.tensors
    firsts = [int((labels == c).nonzero()[0]) for c in range(6)]
    six = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images[firsts], labels[firsts]), 6
    )
    logger = EmbeddingLogger(projector=False, strict=True)
    module = DigitsClassifier()
    make_trainer(tmp_path, [logger], max_epochs=1).fit(module, train_loader, six)
    events = read_events(tmp_path)
    assert f"{TAG}/knn_accuracy" not in events.Tags()["scalars"]
    assert [e.step for e in events.Images(TAG)] == [23]


class Unlabelled(ImageClassifier):
    """Validation batches of images only."""

    def validation_step(self, batch, batch_idx):
        (images,) = batch
        self.log("val_mean", self(images).mean())


class MultiLabel(ImageClassifier):
    """Validation batches of images and multi-hot targets (N, K), as a multi-label classifier's."""

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        self.log("val_bce", F.binary_cross_entropy_with_logits(self(images), targets))


class PerRegion(DigitsCNN):
    """Class scores of each of the 8x8 map's positions, averaged: its head's rows are regions,
    as a detector's box predictor's are proposals."""

    def forward(self, x):
        regions = self.features(x).flatten(2).transpose(1, 2)  # (N, 64, C)
        return self.head(regions.flatten(0, 1)).view(x.shape[0], -1, 10).mean(dim=1)


def test_a_head_whose_rows_are_no_images_is_said_so_not_that_it_never_ran(tmp_path):
    """A user's detector: 'the validation step never ran ...bbox_pred', which did run, on its
    region proposals."""
    logger = EmbeddingLogger(num_images=50)
    with pytest.warns(UserWarning, match=r"'model.head' gave \d+ rows of features for a batch of"):
        fit(ImageClassifier(PerRegion()), [logger], tmp_path, epochs=1, limit_train_batches=1)
    assert "never ran" not in str(logger.alerts.raised)


def test_a_resumed_run_keeps_the_earlier_epochs_in_the_projector(tmp_path):
    """The resumed run's writer rewrote projector_config.pbtxt with its own epochs only: the
    earlier ones vanished from the Projector, their files still on disk (a user trial)."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = [EmbeddingLogger(num_images=50, strict=True), checkpoint]
    fit(DigitsClassifier("sgd", 0.05), first, tmp_path, epochs=2, limit_train_batches=2,
        enable_checkpointing=True)  # fmt: skip
    assert [step for step, _, _ in projector_entries(tmp_path)] == [2, 4]
    resumed = [EmbeddingLogger(num_images=50, strict=True)]
    last = str(tmp_path / "ckpt" / "last.ckpt")
    fit(DigitsClassifier("sgd", 0.05), resumed, tmp_path, epochs=3, limit_train_batches=2,
        ckpt_path=last)  # fmt: skip
    assert [step for step, _, _ in projector_entries(tmp_path)] == [2, 4, 6]


def test_a_step_logged_again_by_a_new_writer_has_one_projector_entry(tmp_path):
    features, metadata = np.eye(4, dtype=np.float32), [["0", "0"]] * 4
    arguments = {"mat": features, "metadata": metadata, "tag": TAG, "metadata_header": ["c", "p"]}
    first = SummaryWriter(tmp_path)
    for step in (1, 2):
        add_embedding(first, global_step=step, **arguments)
    first.close()
    second = SummaryWriter(tmp_path)  # a resume from a checkpoint taken before step 2
    for step in (2, 3):
        add_embedding(second, global_step=step, **arguments)
    second.close()
    config = text_format.Parse((tmp_path / "projector_config.pbtxt").read_text(), ProjectorConfig())
    assert [e.tensor_name for e in config.embeddings] == [f"{TAG}:0000{i}" for i in (1, 2, 3)]


def test_a_chosen_layers_output_of_unlabelled_batches_without_projector(tmp_path):
    logger = EmbeddingLogger(layer="model.features.6", num_images=50, projector=False, strict=True)
    module = Unlabelled(DigitsClassifier().model)
    train_loader, val = digits_loaders()
    images = val.dataset.tensors[0]
    images_only = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), 100)
    make_trainer(tmp_path, [logger], max_epochs=1).fit(module, train_loader, images_only)
    assert not (tmp_path / "projector_config.pbtxt").exists()
    events = read_events(tmp_path)
    assert "embedding/model.features.6/knn_accuracy" not in events.Tags()["scalars"]
    pixels = image_pixels(events.Images("embedding/model.features.6")[-1])
    tab10_blue = np.array([31, 119, 180])  # every dot in the colour of class 0
    assert (np.abs(pixels[..., :3].astype(int) - tab10_blue).sum(-1) == 0).sum() > 100
    # a user's SimCLR embedding read "Classes that form separate clouds": there were none
    assert_noted(pixels, "Without labels every dot has one colour")


def assert_noted(pixels: np.ndarray, why_one_colour: str) -> None:
    """The embedding image ends with the note on reading it, saying why its dots have one
    colour."""
    note = footnote(
        pixels.shape[1],
        f"Each dot is one image, at its features' two principal components. {why_one_colour}: "
        "clouds are groups the features make; the Projector tab shows the same images with t-SNE "
        "or UMAP.",
        dtype=torch.uint8,
    )
    assert np.array_equal(pixels[-note.shape[1] :], note.permute(1, 2, 0).numpy())


def test_many_classes_get_a_colour_bar_by_index_not_ten_repeated_colours(tmp_path):
    """A user's 75 classes were drawn in tab10's 10 colours under a legend that ran down the
    card."""
    module = DigitsClassifier()
    module.model.head = nn.Linear(module.model.head.in_features, 30)
    train_loader, val = digits_loaders()
    images = val.dataset.tensors[0][:120]
    thirty = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, torch.arange(120) % 30), 60
    )
    logger = EmbeddingLogger(num_images=120, projector=False, strict=True)
    make_trainer(tmp_path, [logger], max_epochs=1, limit_train_batches=1).fit(
        module, train_loader, thirty
    )
    pixels = image_pixels(read_events(tmp_path).Images("embedding/model.head")[-1])[..., :3]
    saturated = pixels.astype(int).max(-1) - pixels.astype(int).min(-1) > 30  # not text's grey
    colours_per_row = [
        len({tuple(p) for p in row[kept]}) for row, kept in zip(pixels, saturated, strict=False)
    ]
    assert max(colours_per_row) > 100  # the turbo ramp; 30 swatches had at most 30


class WithRegressor(DigitsCNN):
    """A multi-task net: class scores, and a regression head on earlier features, defined
    after the classifier and returned second."""

    def __init__(self) -> None:
        super().__init__()
        self.regressor = nn.Linear(32, 1)

    def forward(self, x):
        early = self.features[:7](x)
        scores = self.head(self.features[7:](early).mean(dim=(2, 3)))
        return scores, self.regressor(early.mean(dim=(2, 3)))


class MultiTask(ImageClassifier):
    def training_step(self, batch, batch_idx):
        images, labels = batch
        scores, value = self(images)
        return F.cross_entropy(scores, labels) + F.mse_loss(value[:, 0], labels.float())

    def validation_step(self, batch, batch_idx):
        self(batch[0])


def test_the_default_head_is_the_classifier_not_a_head_defined_after_it(tmp_path):
    """A multi-task net's regression head, the last nn.Linear defined, was embedded."""
    logger = EmbeddingLogger(num_images=50, projector=False, strict=True)
    fit(MultiTask(WithRegressor()), [logger], tmp_path, epochs=1, limit_train_batches=2)
    assert logger._layer[0] == "model.head"
    assert "embedding/model.head" in read_events(tmp_path).Tags()["images"]


class NoisyRegressor(WithRegressor):
    """Noise on the regressor's input in every mode: a forward that draws from the global RNG."""

    def forward(self, x):
        early = self.features[:7](x)
        scores = self.head(self.features[7:](early).mean(dim=(2, 3)))
        pooled = early.mean(dim=(2, 3))
        return scores, self.regressor(pooled + 0.01 * torch.randn_like(pooled))


def test_choosing_the_head_leaves_training_bit_identical(tmp_path):
    """The backward that tells the classifier from the regressor touches no gradient, no
    statistic and no RNG, even of a forward that draws random numbers."""

    def train_multitask(log_dir, callbacks):
        torch.manual_seed(0)
        module = MultiTask(NoisyRegressor())
        trainer = fit(module, callbacks, log_dir, epochs=2)
        return module, trainer, torch.random.get_rng_state()

    logger = EmbeddingLogger(num_images=50, projector=False, strict=True)
    with_logger = train_multitask(tmp_path / "with", [logger])
    assert logger._layer[0] == "model.head"
    assert_same_training(train_multitask(tmp_path / "without", []), with_logger)


def test_a_half_precision_model_gets_its_classifier_head(tmp_path):
    """The backward that chooses the head ran the bf16 model on fp32 images, failed, and fell
    back silently to the last nn.Linear defined: the regressor."""
    logger = EmbeddingLogger(num_images=50, projector=False, strict=True)
    module = MultiTask(WithRegressor())
    fit(module, [logger], tmp_path, epochs=1, limit_train_batches=2, precision="bf16-true")
    assert logger._layer[0] == "model.head"


def test_a_sharded_strategy_embeds_the_last_head_and_says_why(tmp_path):
    """No rank-0 backward where the parameters are sharded: it would wait for the other ranks.
    A CPU strategy with FSDP's name stands in for FSDP (which needs a GPU)."""
    from pytorch_lightning.strategies import SingleDeviceStrategy

    class FSDPStrategy(SingleDeviceStrategy):
        pass

    logger = EmbeddingLogger(num_images=50, projector=False, strict=True)
    strategy = FSDPStrategy(device=torch.device("cpu"))
    fit(MultiTask(WithRegressor()), [logger], tmp_path, epochs=1, strategy=strategy)
    assert logger._layer[0] == "model.regressor"
    assert logger.watching() == (
        "the embedding of the input of model.regressor (the last nn.Linear defined: the "
        "FSDPStrategy shards the parameters, so it cannot run the backward that tells the "
        "classifier from an auxiliary head; pass layer= to choose)"
    )
    assert "embedding/model.regressor" in read_events(tmp_path).Tags()["images"]


def test_a_model_without_a_linear_head_is_not_shown_and_fit_goes_on(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    logger = EmbeddingLogger()
    trainer = fit(ImageClassifier(model), [logger], tmp_path, epochs=1)
    assert [a.kind for a in logger.alerts.raised] == ["not_shown"]
    assert "layer=" in logger.alerts.raised[0].message
    assert trainer.current_epoch == 1
    assert not (tmp_path / "projector_config.pbtxt").exists()


def test_a_fit_without_validation_says_so_once(tmp_path):
    """Once for every validation view: one warning naming them all."""
    logger = EmbeddingLogger()
    with pytest.warns(UserWarning, match="validation forward") as warned:
        fit(DigitsClassifier(), [logger, TopPatchesLogger()], tmp_path, epochs=1, validate=False)
    assert [a.kind for a in logger.alerts.raised] == ["not_shown"]
    said = [str(w.message) for w in warned if "validation forward" in str(w.message)]
    assert said == [
        "EmbeddingLogger, TopPatchesLogger: the view is read from the validation forward, and "
        "this fit has no validation loop: define validation_step and pass val_dataloaders (or "
        "a datamodule with val_dataloader()) to trainer.fit."
    ]


def test_validation_turned_off_by_the_trainer_is_named(tmp_path):
    logger = EmbeddingLogger()
    fit(DigitsClassifier(), [logger], tmp_path, epochs=1, limit_val_batches=0)
    assert [a.kind for a in logger.alerts.raised] == ["not_shown"]
    assert "limit_val_batches=0" in logger.alerts.raised[0].message


def test_bad_arguments_fail_at_construction_and_unknown_layers_at_fit_start(tmp_path):
    with pytest.raises(ValueError, match=r"num_images.*at most 5000"):
        EmbeddingLogger(num_images=6000)
    with pytest.raises(ValueError, match="num_images"):
        EmbeddingLogger(num_images=1)
    with pytest.raises(ValueError, match="k"):
        EmbeddingLogger(k=0)
    with pytest.raises(ValueError, match=r"closest valid names.*model.head"):
        fit(DigitsClassifier(), [EmbeddingLogger(layer="model.haed")], tmp_path, epochs=1)


def test_validate_alone_is_not_watched(tmp_path):
    logger = EmbeddingLogger(strict=True)
    _, val = digits_loaders()
    make_trainer(tmp_path, [logger]).validate(DigitsClassifier(), val, verbose=False)
    assert not logger.alerts.raised
    assert not (tmp_path / "projector_config.pbtxt").exists()


def test_the_validation_views_draw_normalized_images_as_the_dataset_had_them(tmp_path):
    """Grey images under ImageNet's Normalize, min-max normalized for display, turned blue: the
    means and deviations differ by channel. Drawn as they were, they stay grey: the projector's
    thumbnails are the images, and the only tint in the top-patches grid is the conv's zero
    padding, which is the mean colour in the images' terms."""
    from PIL import Image
    from torchvision import transforms

    torch.manual_seed(0)
    grey = 0.6 + 0.35 * torch.rand(96, 1, 16, 16)
    grey[:, :, 4:12, 4:12] -= 0.5 * torch.rand(96, 1, 1, 1)  # a darker square of any depth
    raw, labels = grey.expand(-1, 3, -1, -1), torch.arange(96) % 4
    normalize = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train = torch.utils.data.DataLoader(TransformedImages(raw[:64], labels[:64], normalize), 32)
    val = torch.utils.data.DataLoader(TransformedImages(raw[64:], labels[64:], normalize), 32)
    model = sequential_cnn(in_channels=3, kernel=5)
    callbacks = [EmbeddingLogger(strict=True), TopPatchesLogger(units=2, strict=True)]
    make_trainer(tmp_path, callbacks, max_epochs=1).fit(ImageClassifier(model), train, val)

    config = text_format.Parse((tmp_path / "projector_config.pbtxt").read_text(), ProjectorConfig())
    (embedding,) = config.embeddings
    sprite = np.asarray(Image.open(tmp_path / embedding.sprite.image_path).convert("RGB"))
    rows = (tmp_path / embedding.metadata_path).read_text().splitlines()[1:]
    side, per_row = 16, sprite.shape[1] // 16
    for index, row in enumerate(rows):
        position = int(row.split("\t")[1])
        top, left = divmod(index, per_row)
        tile = sprite[top * side : (top + 1) * side, left * side : (left + 1) * side]
        expected = (raw[64 + position].permute(1, 2, 0) * 255).round().numpy()
        assert np.abs(tile - expected).max() <= 1
    for layer in ("model.1", "model.4"):
        grid = image_pixels(read_events(tmp_path).Images(f"top_patches/{layer}")[-1])
        tinted = np.abs(grid[..., 0].astype(int) - grid[..., 2].astype(int)) > 1
        assert (grid[tinted][:, :3] == (124, 116, 104)).all(), layer


class StreamedDigits(torch.utils.data.IterableDataset):
    """The validation digits as a stream: a loader without a length."""

    def __iter__(self):
        _, val = digits_loaders()
        yield from zip(*val.dataset.tensors, strict=True)


class ValidatesSeveral(DigitsClassifier):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return super().validation_step(batch, batch_idx)


def test_validation_streams_without_length_are_read(tmp_path):
    """Looking for the first validation loader's Normalize asked it for its truth value, which a
    loader of an IterableDataset answers with a TypeError: fit() aborted."""
    logger = EmbeddingLogger(num_images=64, projector=False, strict=True)
    train, _ = digits_loaders()
    stream = torch.utils.data.DataLoader(StreamedDigits(), batch_size=32)
    trainer = make_trainer(tmp_path, [logger], max_epochs=1, limit_train_batches=2)
    trainer.fit(ValidatesSeveral(), train, [stream, stream])
    assert len(read_events(tmp_path).Images(TAG)) == 1


def test_the_projector_is_written_on_the_background_writer(tmp_path, monkeypatch):
    """Its sprite's PNG is an image's write: on the training thread (where small writes moved),
    it took EmbeddingLogger's own time from 7 to 82 ms an epoch on the digits, from 88 to 654 ms
    on resnet18."""
    import threading

    from lightning_viz._compat import add_embedding as writes

    threads = []

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return writes(*args, **kwargs)

    monkeypatch.setattr("lightning_viz.callbacks.embedding_logger.add_embedding", recording)
    fit(DigitsClassifier(), [EmbeddingLogger(strict=True)], tmp_path, epochs=2)
    assert len(threads) == 2
    assert threading.main_thread() not in threads
    assert len(projector_entries(tmp_path)) == 2


def test_multi_hot_targets_are_named_not_called_no_labels(tmp_path):
    """A multi-label classifier's validation batches hold (N, K) multi-hot targets: the note said
    "Without labels", and a user looked for the labels they had passed."""
    logger = EmbeddingLogger(num_images=50, projector=False, strict=True)
    train_loader, val = digits_loaders()
    images, labels = val.dataset.tensors
    targets = F.one_hot(labels, 10).float()
    targets[:, 0] = 1.0  # every image holds a 0 as well
    multi_hot = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, targets), 100)
    make_trainer(tmp_path, [logger], max_epochs=1).fit(
        MultiLabel(DigitsClassifier().model), train_loader, multi_hot
    )
    pixels = image_pixels(read_events(tmp_path).Images("embedding/model.head")[-1])
    assert_noted(
        pixels, "The targets are multi-hot (several classes an image), so every dot has one colour"
    )


class Regressor(ImageClassifier):
    """One float per image, the digit's value, trained with the MSE on (N, 1) float targets."""

    def training_step(self, batch, batch_idx):
        images, targets = batch
        return F.mse_loss(self(images), targets)

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        self.log("val_mse", F.mse_loss(self(images), targets))


@pytest.mark.parametrize("given", [False, True])
def test_a_regressors_dots_are_coloured_by_their_float_targets(tmp_path, given):
    """A regressor's validation batches hold float targets: every dot had one colour under
    "Without labels", and the projector named no target. ``given``: batch_to_images returns
    them, as (N, 1)."""
    train_images, train_labels = digits_loaders()[0].dataset.tensors
    images, labels = digits_loaders()[1].dataset.tensors
    model = DigitsClassifier().model
    model.head = nn.Linear(model.head.in_features, 1)

    def floats(images, labels):
        dataset = torch.utils.data.TensorDataset(images, labels.float()[:, None])
        return torch.utils.data.DataLoader(dataset, 100)

    split = {"batch_to_images": lambda batch: tuple(batch)} if given else {}
    logger = EmbeddingLogger(num_images=120, strict=True, **split)
    make_trainer(tmp_path, [logger], max_epochs=1).fit(
        Regressor(model), floats(train_images, train_labels), floats(images, labels)
    )
    rows = projector_entries(tmp_path, header="target\tposition")[-1][2]
    assert [float(value) for value, _ in rows] == [
        float(labels[int(position)]) for _, position in rows
    ]
    pixels = image_pixels(read_events(tmp_path).Images("embedding/model.head")[-1])[..., :3]
    for digit in (0, 9):  # dots in the colours of the lowest and the highest target
        colour = value_colours(torch.tensor([0.0, 9.0]))[digit // 9].numpy()
        assert (np.abs(pixels.astype(int) - colour).sum(-1) == 0).sum() > 20
    note = footnote(
        pixels.shape[1],
        "Each dot is one image, at its features' two principal components. Each dot's colour is "
        "its image's target: colours that run in order across the cloud mean the features order "
        "the images by it; the Projector tab shows the same images with t-SNE or UMAP.",
        dtype=torch.uint8,
    )
    assert np.array_equal(pixels[-note.shape[1] :], note.permute(1, 2, 0).numpy())
