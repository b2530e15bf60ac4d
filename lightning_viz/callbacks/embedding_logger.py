"""EmbeddingLogger: the penultimate features of a fixed validation subset, epoch after epoch."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_viz import tags
from lightning_viz._compat import add_embedding, fit_dataloaders, sharded_strategy
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.base import to_host
from lightning_viz.callbacks.layers import named_layers
from lightning_viz.callbacks.probe_base import Unsuited, class_names_of, in_training_precision
from lightning_viz.callbacks.validation_view import ValidationView
from lightning_viz.functional import grid
from lightning_viz.functional._pass import untouched_rng
from lightning_viz.functional._validation import (
    all_finite,
    check_class_names,
    check_int,
    check_layer_names,
    not_finite_error,
)
from lightning_viz.functional.captions import (
    captioned,
    class_name,
    color_bar,
    footnote,
    stack_rows,
)
from lightning_viz.functional.embedding import (
    MAX_DISTINCT_CLASSES,
    VALUE_COLORMAP,
    class_colours,
    knn_accuracy,
    pca_2d,
    scatter_image,
    subset_positions,
    value_colours,
)
from lightning_viz.functional.gradcam import on_the_scores_path
from lightning_viz.functional.images import CARD_WIDTH, normalize, to_uint8
from lightning_viz.probes import BatchToImages

MAX_IMAGES = 5000
"""The most images an embedding may hold: TensorBoard's projector parses its text files in the
browser, and loads 1,000 points with thumbnails in about a second but slows to a crawl on tens of
thousands."""
THUMBNAIL = 32
"""The side of the thumbnails in the projector's sprite (1,000 of them make a 1024x1024 sprite;
TensorBoard takes sprites up to 8192 pixels a side)."""
SCATTER_SIDE = CARD_WIDTH
"""The side of the scatter plot, in pixels: as wide as TensorBoard's image card."""


class EmbeddingLogger(ValidationView):
    r"""The penultimate features of a fixed validation subset, in TensorBoard's projector and as
    a per-epoch 2-D scatter plot, with a scalar of how well they separate the classes.

    At the end of every ``every_n_epochs`` validation epoch, the features of ``num_images``
    validation images (the same images every epoch: positions in the validation stream drawn
    once with ``seed``) are read from the validation forward the Trainer runs anyway: a hook on
    ``layer`` lives for one batch at a time. By default the features are the input of the
    classifier head (the last ``nn.Linear`` the class scores come from: not a regression or
    auxiliary head defined after it, told by one forward and backward of one image at the first
    validation batch where the model has several; the last defined under a strategy that shards
    the parameters): what the network has made of the image just before it decides. Then, on
    global rank 0:

    - the projector gets them with each image's class (or float target) and a thumbnail (as
      the dataset had the image before its torchvision ``Normalize``, else min-max normalized;
      ``add_embedding``: TensorBoard's Projector tab shows t-SNE, UMAP or PCA of them, one
      entry per epoch);
    - a scatter plot of their two principal components (PCA on the device), coloured by class,
      goes to the Images tab, so the evolution shows epoch after epoch;
    - the leave-one-out k-nearest-neighbour accuracy of their classes (cosine similarity) is
      logged as a scalar: how well the representation separates the classes.

    Under DDP the subset is drawn from rank 0's share of the validation set (no collective). A
    validation loader that shuffles shows other images every epoch. Where the fit has several
    validation dataloaders, the subset comes from the first.

    Args:
        layer: the module whose features to embed: its output, averaged over space when it is a
            (N, C, H, W) map and over tokens when it is (N, T, D). Default: the input of the
            classifier head (above).
        num_images: the size of the subset, at most 5,000 (:data:`MAX_IMAGES`: the projector
            parses its files in the browser and slows to a crawl beyond that; 1,000 load in
            about a second). A validation set with fewer images gives all of them.
        every_n_epochs: embed every this many validation epochs.
        k: neighbours of the k-NN accuracy.
        projector: also write the projector files (features, metadata, sprite) every logged
            epoch: ``num_images`` x feature size floats as text, about 10 MB for 1,000 x 512.
        seed: draws the subset (its own generator: training's RNG is not touched).
        class_names: names of the classes; default from the datamodule or dataset
            (``classes`` or ``class_names``), else the indices.
        batch_to_images: where the images and labels are in a batch that is not a tensor, an
            ``(images, labels, ...)`` sequence or a dict.
        on_alert, strict, budget: as in :class:`~lightning_viz.ActivationMonitor`.
        image_origin: as in :class:`~lightning_viz.GradCAMLogger`, for the projector's sprite
            (the scatter plot is no picture of images).

    Raises:
        ValueError: bad arguments (at construction); an unknown ``layer`` (at fit start).

    Logged keys (``<layer>`` the embedded module's name; the classifier head by default, whose
    input is embedded):

    - ``embedding/<layer>`` (image): the scatter plot of the subset's features on their two
      principal axes, a dot per image coloured by its class (a colour each up to 20 classes,
      with their legend; past 20, a colour bar by class index, where neighbouring classes look
      alike; a regressor's float targets, (N,) or (N, 1), colour it by value, with a colour
      bar), and the k-NN accuracy in its caption.
    - ``embedding/<layer>/knn_accuracy``: the k-NN accuracy (leave one out) on the subset's
      images whose class has another image in it; not logged where no class has two.
    - the projector's ``embedding/<layer>`` at each logged step (``<step>/embedding%2f<layer>/``
      in the log directory, with ``projector_config.pbtxt``), named ``embedding/<layer>:<step>``.
      The Projector opens on the earliest step (it sorts the names); pick the latest in its
      tensor menu on the left.
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead``: the share of
      training time spent in it, and in all.

    How to read it: a network that learns pulls the images of a class together and pushes the
    classes apart: the scatter's colours gather into separate clouds and the k-NN accuracy
    climbs towards the validation accuracy (a k-NN accuracy far below it means the head
    separates what the features barely do). Clouds that merge again, or an accuracy that falls
    while the loss still drops, mean the features are degrading (overfitting, a learning rate
    too high). PCA shows the two directions of largest spread only: classes that overlap there
    may still separate in the projector's t-SNE or UMAP, which read every dimension. Points far
    from their class's cloud are worth a look in the projector, whose thumbnails show them.

    Cost: a hook per validation batch that copies the subset's rows of one feature tensor and
    their thumbnails (no extra forward, but for the one image that chooses the head); at the
    logged epoch's end an SVD of num_images x features, a num_images² similarity and a 350x350
    image, on the device. The projector files are written on the background writer. Measured
    (``python -m benchmarks.validation_views``): 7 ms of the digits CNN's 40 ms validation epoch
    (360 images), 88 ms of resnet18's 2 s (2,048 images at 64 pixels).

    Example::

        trainer = Trainer(callbacks=[EmbeddingLogger(num_images=500, every_n_epochs=5)])
    """

    view = "embedding"

    def __init__(
        self,
        layer: str | None = None,
        num_images: int = 1000,
        every_n_epochs: int = 1,
        k: int = 5,
        projector: bool = True,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
        batch_to_images: BatchToImages | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        image_origin: str = "upper",
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            batch_to_images=batch_to_images,
            on_alert=on_alert,
            strict=strict,
            budget=budget,
            image_origin=image_origin,
        )
        if layer is not None:
            layer = check_layer_names([layer], "layer")[0]
        self.layer_name = layer
        self.num_images = check_int("num_images", num_images, minimum=2)
        if self.num_images > MAX_IMAGES:
            raise ValueError(
                f"`num_images` must be at most {MAX_IMAGES} (TensorBoard's projector parses its "
                f"files in the browser and slows to a crawl on more), got {num_images}"
            )
        self.k = check_int("k", k)
        self.projector = bool(projector)
        self.seed = check_int("seed", seed, minimum=0)
        self.given_class_names = check_class_names(class_names)
        self.class_names: list[str] | None = self.given_class_names
        self._layer: tuple[str, nn.Module, bool] | None = None
        self._heads: dict[str, nn.Module] = {}  # the candidates, until the first batch chooses
        self._guess = ""  # why the head was not chosen by a backward, when it was not
        self._subset: list[int] = []
        self._features: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._thumbnails: list[Tensor] = []
        self._positions: list[int] = []
        self._rows_seen: tuple[int, int] | None = None  # (rows, images): not one per image

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"layer": self.layer_name, "num_images": self.num_images}

    @override
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._guess = ""
        if self.layer_name is not None:
            name, module = next(iter(named_layers(pl_module, [self.layer_name], "").items()))
            self._layer = (name, module, False)
            return
        heads = [(n, m) for n, m in pl_module.named_modules() if isinstance(m, nn.Linear)]
        if not heads:
            raise Unsuited(
                f"{type(self).__name__}: {type(pl_module).__name__} has no nn.Linear head whose "
                "input to embed (an autoencoder or a segmentation net). Pass layer= naming the "
                "module whose output to embed (e.g. the encoder's last block)."
            )
        self._heads = dict(heads)
        self._layer = (*heads[-1], True) if len(heads) == 1 else None
        sharded = sharded_strategy(trainer)
        if self._layer is None and sharded is not None:
            self._layer = (*heads[-1], True)
            self._guess = (
                f"the last nn.Linear defined: the {sharded} shards the parameters, so it cannot "
                "run the backward that tells the classifier from an auxiliary head; pass layer= "
                "to choose"
            )

    def _choose_head(self, pl_module: pl.LightningModule, images: Tensor) -> None:
        """The classifier head among several linear layers: the last that the model's class
        scores come from (:func:`~lightning_viz.functional.gradcam.on_the_scores_path`, one
        backward of an image), not an auxiliary head defined after it (a multi-task net's
        regression head); the last defined where that cannot tell."""
        forward = in_training_precision(pl_module)
        try:
            with untouched_rng():
                names = on_the_scores_path(pl_module, images[:1], list(self._heads), forward)
        except Exception:  # a forward that does not take the images alone: the last defined
            names = []
        name = names[-1] if names else list(self._heads)[-1]
        self._layer = (name, self._heads[name], True)

    @override
    def watching(self) -> str:
        if self._layer is None:
            return (
                "the embedding of the input of the classifier head (chosen on the first "
                "validation batch)"
            )
        name, _, head_input = self._layer
        guess = f" ({self._guess})" if self._guess else ""
        return f"the embedding of {'the input of ' if head_input else ''}{name}{guess}"

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().start(trainer, pl_module)
        self.class_names = self.given_class_names or class_names_of(trainer)

    @override
    def begin_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._subset = subset_positions(self._stream_length(trainer), self.num_images, self.seed)
        self._subset = self._subset.tolist()
        self._features, self._labels, self._thumbnails, self._positions = [], [], [], []
        self._rows_seen = None

    def _stream_length(self, trainer: pl.Trainer) -> int:
        """How many images the epoch's first validation loader will show on this rank: its
        dataset's share of this rank, and no more than its batches hold; ``num_images`` when
        neither is known (the subset is then the stream's first images)."""
        loader = next(fit_dataloaders(trainer))
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        bounds = []
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__"):
            bounds.append(math.ceil(len(dataset) / trainer.world_size))
        batches = trainer.num_val_batches[0] if trainer.num_val_batches else math.inf
        batch_size = getattr(loader, "batch_size", None)
        if batch_size and batches != math.inf:
            bounds.append(int(batches) * batch_size)
        return min(bounds) if bounds else self.num_images

    @override
    def hooks(
        self, pl_module: pl.LightningModule, images: Tensor, labels: Tensor | None, first: int
    ) -> list[RemovableHandle]:
        low = bisect.bisect_left(self._subset, first)
        high = bisect.bisect_left(self._subset, first + images.shape[0])
        if low == high:
            return []
        positions = self._subset[low:high]
        rows = torch.tensor([p - first for p in positions]).to(images.device, non_blocking=True)
        self._positions += positions
        chosen = images.index_select(0, rows)
        self._thumbnails.append(thumbnails(chosen, self.displayed(chosen)))
        if labels is not None:
            self._labels.append(labels.index_select(0, rows.to(labels.device)))
        if self._layer is None:
            self._choose_head(pl_module, images)
        name, module, head_input = self._layer
        taken = []

        def take(found: Any) -> None:
            if taken:
                return  # a module called twice in one forward: its first call counts
            with self.timing():
                record(found)

        def record(found: Any) -> None:
            try:
                features = features_of(found)
                if features.shape[0] != images.shape[0]:
                    # another forward than the batch's (another callback's probe), or a layer
                    # whose rows are no images (a detector's region proposals)
                    self._rows_seen = (features.shape[0], images.shape[0])
                    return
                taken.append(True)
                self._features.append(features.index_select(0, rows.to(features.device)))
            except Exception as error:  # a hook must never break the validation step
                self.problem(f"layer {name!r}: {type(error).__name__}: {error}")

        if head_input:
            return [module.register_forward_pre_hook(lambda m, args: take(args[0]))]
        return [module.register_forward_hook(lambda m, args, output: take(output))]

    @override
    def end_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._thumbnails and not self._features and self._rows_seen is not None:
            rows, images = self._rows_seen
            raise Unsuited(
                f"{type(self).__name__}: {self._layer[0]!r} gave {rows} rows of features for a "
                f"batch of {images} images, not one per image (a detector's region proposals?), "
                "so there is nothing to embed per image. Pass layer= naming a module whose "
                "output has the batch's images first."
            )
        if self._thumbnails and not self._features:
            raise Unsuited(
                f"{type(self).__name__}: the validation step never ran {self._layer[0]!r}, "
                "whose features it embeds: it reads the validation forward. Pass layer= naming "
                "a module the validation step runs."
            )
        if len(self._features) != len(self._thumbnails):
            raise ValueError(f"layer {self._layer[0]!r} did not run in every validation forward")
        if not self._features:
            return
        features = torch.cat(self._features)
        targets = torch.cat(self._labels) if len(self._labels) == len(self._features) else None
        floats = targets is not None and targets.is_floating_point()
        values = targets if floats and all_finite(targets) else None  # else one colour
        labels = None if targets is None or floats else targets.long()
        if not all_finite(features):
            raise not_finite_error(f"the features of {self._layer[0]!r}", "the validation images")
        accuracy = knn_accuracy(features, labels, self.k) if labels is not None else None
        points = pca_2d(features)
        if values is not None:
            colours = value_colours(values)
        else:
            count = 1 if labels is None else int(labels.max()) + 1
            colours = class_colours(
                labels if labels is not None else torch.zeros(len(features)),
                count,
                features.device,
            )
        scatter = scatter_image(points, colours, SCATTER_SIDE)
        host = to_host(
            {"features": features}
            | ({} if labels is None else {"labels": labels, "accuracy": accuracy})
            | ({} if values is None else {"values": values})
        )
        name = self._layer[0]
        classes = None if labels is None else sorted(set(host["labels"].long().tolist()))
        knn = None if labels is None else float(host["accuracy"])
        if knn is not None and not math.isnan(knn):
            self.log_scalars(trainer, {tags.tag(tags.EMBEDDING_SCALAR, name, "knn_accuracy"): knn})
        value_range = (
            None if values is None else (float(host["values"].min()), float(host["values"].max()))
        )
        picture = self._picture(scatter, classes, knn, value_range)
        self.log_image(trainer, tags.tag(tags.EMBEDDING, name), picture)
        if self.projector:
            self._write_projector(trainer, host, torch.cat(self._thumbnails).cpu())

    def _picture(
        self,
        scatter: Tensor,
        classes: list[int] | None,
        knn: float | None,
        value_range: tuple[float, float] | None = None,
    ) -> Tensor:
        """The scatter plot under its title, with the class legend (or the colour bar of the
        float targets' ``value_range``) and a note on how to read it."""
        name, _, head_input = self._layer
        device, width = scatter.device, scatter.shape[-1]
        what = f"input of {name}" if head_input else name
        title = f"{what}: {len(self._positions)} validation images, PCA"
        if knn is not None and math.isnan(knn):
            title += "; no class has two images for a k-NN accuracy"
        elif knn is not None:
            title += f"; {self.k}-NN accuracy {knn:.1%}"
        parts = [footnote(width, title, device, torch.uint8), scatter]
        if classes and classes[-1] >= MAX_DISTINCT_CLASSES:  # a bar: swatches ran down the card
            first, last = (class_name(c, self.class_names) for c in (0, classes[-1]))
            title = f"class, by index (past {MAX_DISTINCT_CLASSES}, neighbours look alike)"
            parts.append(color_bar(width, "turbo", first, last, title, device, torch.uint8))
        elif value_range is not None:
            low, high = (f"{v:.3g}" for v in value_range)
            bar = color_bar(width, VALUE_COLORMAP, low, high, "target", device, torch.uint8)
            parts.append(bar)
        elif classes:
            names = [class_name(c, self.class_names) for c in classes]
            colours = class_colours(classes, classes[-1] + 1, device)
            swatches = colours[:, :, None, None].expand(-1, -1, 12, 60)
            legend = captioned(swatches.contiguous(), names)
            parts.append(grid(legend, nrow=max(1, width // 64), padding=2))
            parts[-1] = F.pad(parts[-1], (0, max(0, width - parts[-1].shape[-1])), value=255)
            parts[-1] = parts[-1][..., :width]
        unlabelled = (
            "The targets are multi-hot (several classes an image), so every dot has one colour"
            if self.multi_hot
            else "Without labels every dot has one colour"
        )
        if classes:
            read = "Classes that form separate clouds are separated by the features"
        elif value_range is not None:
            read = (
                "Each dot's colour is its image's target: colours that run in order across the "
                "cloud mean the features order the images by it"
            )
        else:
            read = f"{unlabelled}: clouds are groups the features make"
        note = (
            f"Each dot is one image, at its features' two principal components. {read}; the "
            "Projector tab shows the same images with t-SNE or UMAP."
        )
        parts.append(footnote(width, note, device, torch.uint8))
        return stack_rows(*parts)

    def _write_projector(
        self, trainer: pl.Trainer, host: dict[str, Tensor], images: Tensor
    ) -> None:
        name, step = self._layer[0], trainer.global_step
        tag = tags.tag(tags.EMBEDDING, name)
        positions = list(self._positions)
        if "labels" in host:
            names = [class_name(c, self.class_names) for c in host["labels"].long().tolist()]
            metadata = [[n, str(p)] for n, p in zip(names, positions, strict=True)]
            header = ["class", "position"]
        elif "values" in host:
            values = [f"{v:.4g}" for v in host["values"].tolist()]
            metadata = [[v, str(p)] for v, p in zip(values, positions, strict=True)]
            header = ["target", "position"]
        else:
            metadata, header = [str(p) for p in positions], None
        features = host["features"].numpy()
        sprite = self.oriented(images.float() / 255)

        def write(writer: Any) -> None:
            add_embedding(
                writer,
                mat=features,
                metadata=metadata,
                label_img=sprite,
                global_step=step,
                tag=tag,
                metadata_header=header,
            )

        # the sprite's PNG (a few hundred ms): on the background writer, as images are
        self.write(trainer, f"the embedding of {name!r}", write, image=True)


def features_of(found: Any) -> Tensor:
    """(N, D) features of a module's input or output: a (N, C, H, W) map averaged over space, a
    (N, T, D) token map over its tokens, anything else flattened after the batch dimension."""
    if isinstance(found, (tuple, list)) and found:
        found = found[0]
    if not isinstance(found, Tensor):
        raise ValueError(f"gave {type(found).__name__}, not a tensor of features")
    found = found.detach()
    if found.dim() == 4:
        return found.float().mean(dim=(2, 3))
    if found.dim() == 3:
        return found.float().mean(dim=1)
    return found.float().flatten(1)


def thumbnails(images: Tensor, shown: Tensor | None = None) -> Tensor:
    """(N, 1 or 3, s, s) uint8 thumbnails of (N, C, H, W) images for the projector's sprite,
    shrunk to fit :data:`THUMBNAIL`: ``shown``, the images in [0, 1] RGB as the dataset had them
    before its ``Normalize`` (:meth:`ValidationView.displayed`), else each image min-max
    normalized, grey for other than 3 channels."""
    pixels = shown
    if pixels is None:
        pixels = images.detach().float()
        if pixels.shape[1] != 3:
            pixels = pixels.mean(dim=1, keepdim=True)
        pixels = normalize(pixels)
    side = max(pixels.shape[-2:])
    if side > THUMBNAIL:
        size = tuple(max(1, round(s * THUMBNAIL / side)) for s in pixels.shape[-2:])
        pixels = F.interpolate(pixels, size=size, mode="area")
    return to_uint8(pixels)
