"""Probes: the fixed images a run is looked at through, epoch after epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lightning_viz.functional._pass import untouched_rng
from lightning_viz.functional._validation import check_int
from lightning_viz.functional.images import normalize, to_rgb, unnormalized

MIN_PICKED, MAX_PICKED = 8, 16
"""How many probes ``from_dataloader`` picks by default: one per class, at least 8, at most 16."""
VALUE_POOL = 4
"""Float targets: ``from_dataloader`` picks its probes from this many times as many images."""

_IMAGE_KEYS = ("image", "images", "x", "input", "inputs", "pixel_values")
_LABEL_KEYS = ("label", "labels", "y", "target", "targets")


BatchToImages = Callable[[Any], Tensor | tuple[Tensor, Tensor | None]]
"""Where the images (and labels) are in a batch that is not a tensor, an ``(images, labels,
...)`` sequence or a dict: ``batch_to_images(batch)`` returns the (N, C, H, W) images, or
``(images, labels)``."""


class Probes:
    """A fixed set of probe images, with optional labels and display images.

    Args:
        images: (N, C, H, W) float or uint8 tensor, as the model takes them (a model that
            normalizes uint8 images itself gets them as they are; gradient passes use float).
        labels: optional (N,) integer class labels.
        display: optional (N, 3, H, W) RGB in [0, 1] that overlays are drawn on; by default each
            probe min-max normalized, grey (one channel, or the mean of other than 3) repeated to
            RGB.
        boxes: optional (N, 4) integer boxes (top, left, bottom, right; bottom and right
            exclusive) of what each probe's class is about: the views that explain a class then
            log how well their maps localize it (pointing game, energy in the box).
        masks: optional (N, H, W) masks (boolean, or nonzero inside) of the same, for objects a
            box fits badly (a segmentation's ground truth); give boxes or masks, not both.
        multi_label: each probe's label is one of the classes of a multi-label target (picked
            from multi-hot targets): the class views read each class's sigmoid by default.
        values: optional (N,) float targets, a regressor's (or a single-logit classifier's 0s
            and 1s): each probe's caption says its true value beside the model's output.

    Raises:
        ValueError: images that are not a non-empty (N, C, H, W) float batch, labels of another
            length or not integers, display images of another shape or outside [0, 1], boxes
            that are not (N, 4) integers inside the images, masks that are not (N, H, W) with a
            pixel inside each, both boxes and masks, or values that are not N finite floats.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        display: Tensor | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
        multi_label: bool = False,
        values: Tensor | None = None,
    ):
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"probe images must be a non-empty (N, C, H, W) tensor, got {shape}")
        if not images.dtype.is_floating_point and images.dtype != torch.uint8:
            raise ValueError(f"probe images must be floating point or uint8, got {images.dtype}")
        if images.dtype.is_floating_point and not images.isfinite().all():
            raise ValueError("probe images contain NaN or Inf: every map made from them would too")
        n, _, height, width = images.shape
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != (n,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(
                    f"probe labels must be {n} integer class indices, got shape "
                    f"{tuple(labels.shape)} {labels.dtype}"
                )
            labels = labels.long()
        if values is not None:
            values = torch.as_tensor(values)
            if (
                values.shape != (n,)
                or not values.dtype.is_floating_point
                or not values.isfinite().all()
            ):
                raise ValueError(
                    f"probe values must be {n} finite floats (a regressor's targets), got shape "
                    f"{tuple(values.shape)} {values.dtype}"
                )
            values = values.detach().float()
        if display is None:
            pixels = images.float()
            grey = pixels if pixels.shape[1] in (1, 3) else pixels.mean(dim=1, keepdim=True)
            display = to_rgb(normalize(grey.detach()))
        elif not isinstance(display, Tensor) or display.shape != (n, 3, height, width):
            shape = tuple(display.shape) if isinstance(display, Tensor) else type(display).__name__
            raise ValueError(
                f"probe display images must be RGB of shape {(n, 3, height, width)} (one per "
                f"probe, the probes' size), got {shape}"
            )
        elif display.min() < 0 or display.max() > 1:
            raise ValueError("probe display images must lie in [0, 1]")
        if boxes is not None:
            boxes = torch.as_tensor(boxes)
            if boxes.shape != (n, 4) or boxes.dtype.is_floating_point:
                raise ValueError(
                    f"probe boxes must be {n} integer (top, left, bottom, right) rows, got "
                    f"shape {tuple(boxes.shape)} {boxes.dtype}"
                )
            boxes = boxes.long()
            corners = boxes[:, :2] >= 0
            ends = (boxes[:, 2] <= height) & (boxes[:, 3] <= width)
            if not corners.all() or not ends.all() or (boxes[:, 2:] <= boxes[:, :2]).any():
                raise ValueError(
                    f"probe boxes must lie in the {height}x{width} images, each with bottom > top "
                    "and right > left (bottom and right exclusive)"
                )
        if masks is not None:
            if boxes is not None:
                raise ValueError("give probe boxes or masks, not both")
            masks = torch.as_tensor(masks)
            if masks.shape != (n, height, width):
                raise ValueError(
                    f"probe masks must have shape {(n, height, width)} (one per probe, the "
                    f"probes' size), got {tuple(masks.shape)}"
                )
            masks = masks != 0
            if not masks.flatten(1).any(dim=1).all():
                raise ValueError("every probe mask must have at least one pixel inside")
        self.images = images.detach()
        self.labels = labels
        self.display = display.detach().float()
        self.boxes = boxes
        self.masks = masks
        self.multi_label = bool(multi_label)
        self.values = values

    @property
    def regions(self) -> Tensor | None:
        """Where each probe's object lies, for the localization scores: the (N, 4) boxes or the
        (N, H, W) masks, or None."""
        return self.boxes if self.boxes is not None else self.masks

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        labels = (
            "with labels"
            if self.labels is not None
            else "with values"
            if self.values is not None
            else "no labels"
        )
        return f"Probes({len(self)} x {tuple(self.images.shape[1:])}, {labels})"

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> Probes:
        """These probes on ``device`` (self when already there)."""
        device = torch.device(device)
        if self.device == device:
            return self
        labels = None if self.labels is None else self.labels.to(device)
        boxes = None if self.boxes is None else self.boxes.to(device)
        masks = None if self.masks is None else self.masks.to(device)
        values = None if self.values is None else self.values.to(device)
        display = self.display.to(device)
        return Probes(
            self.images.to(device), labels, display, boxes, masks, self.multi_label, values
        )

    def state_dict(self) -> dict[str, Tensor]:
        state = {"images": self.images.cpu(), "display": self.display.cpu()}
        if self.labels is not None:
            state["labels"] = self.labels.cpu()
        if self.boxes is not None:
            state["boxes"] = self.boxes.cpu()
        if self.masks is not None:
            state["masks"] = self.masks.cpu()
        if self.multi_label:
            state["multi_label"] = torch.tensor(True)
        if self.values is not None:
            state["values"] = self.values.cpu()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Probes:
        return cls(
            state["images"],
            state.get("labels"),
            state["display"],
            state.get("boxes"),
            state.get("masks"),
            bool(state.get("multi_label", False)),
            state.get("values"),
        )

    @classmethod
    def from_dataloader(
        cls,
        loader: Iterable,
        n: int | None = None,
        max_batches: int = 64,
        batch_to_images: BatchToImages | None = None,
    ) -> Probes:
        """Pick ``n`` probes from a DataLoader, deterministically, without touching training's RNG.

        With labels, one image per class comes first (classes in increasing order), then the
        rest in dataset order. ``n=None`` picks one per class, at least 8 and at most 16 (the
        classes found before two batches in a row bring no new one); 8 without labels.
        Segmentation masks (an (N, H, W) integer target the images' size; values below 0 and
        255 are ignored) pick per class the image it covers most, besides the class covering
        most pixels of all (the background): each probe is labelled with its class and carries
        its mask, so the views explain it and score how well their maps fall on it (not with
        ``batch_to_images``, which names the images and labels itself). Multi-hot targets (an
        (N, K) tensor of 0s and 1s, a multi-label classifier's) pick per class the first image
        it is on with the fewest classes on, labelled with that class (``multi_label``: the class
        views then read each class's sigmoid unless told otherwise); one-hot targets (a single 1
        per image) are labels. Float targets (an (N,) or (N, 1) tensor, a regressor's) pick
        images spread evenly over their range, lowest first, from :data:`VALUE_POOL` times as
        many as wanted, each carrying its value. The probes are displayed as they were before a
        torchvision ``Normalize`` in the dataset's transform (or a ``Subset``'s dataset's), where
        there is one.
        A map-style DataLoader is read through a fresh, unshuffled loader
        over its dataset (its own sampler and generator are not touched); any other iterable is
        read as it is. Either way under a fixed seed, with the global torch, numpy and Python
        generators restored afterwards (a DataLoader iterator draws a seed from the global
        generator), reading at most ``max_batches`` batches.

        Images and labels are found in a batch that is a tensor, an ``(images, labels, ...)``
        sequence or a dict (by the usual keys, else by shape); ``batch_to_images`` says where
        they are in any other batch: it returns the (N, C, H, W) images, or ``(images, labels)``
        (integer class labels, or a regressor's float targets).

        Raises:
            ValueError: ``n`` < 1, an empty loader, or batches without recognizable images.
        """
        if n is not None:
            check_int("n", n)
        wanted = MAX_PICKED if n is None else n
        split = split_batch if batch_to_images is None else split_batch_with(batch_to_images)
        images, labels, masks, multi_hot, values, classes_seen = [], [], [], [], [], [0]
        mask_classes: set[int] = set()
        with preserved_rng(seed=0):
            for index, batch in enumerate(_in_dataset_order(loader)):
                batch_images, batch_labels = split(batch)
                images.append(batch_images.detach().cpu())
                if batch_labels is not None and batch_labels.dtype.is_floating_point:
                    found = float_targets(batch_labels, len(batch_images))  # batch_to_images's
                    if found is None:
                        raise ValueError(
                            "batch_to_images returned float targets of shape "
                            f"{tuple(batch_labels.shape)} for {len(batch_images)} images: return "
                            "(N,) integer class labels, or (N,) or (N, 1) finite float targets"
                        )
                    values.append(found.detach().cpu())
                elif batch_labels is not None:
                    labels.append(batch_labels.detach().cpu())
                elif batch_to_images is None:
                    if (found := _masks(batch, batch_images)) is not None:
                        masks.append(found.detach().cpu())
                        mask_classes.update(_class_ids(found.unique()).tolist())
                    elif (hot := multi_hot_targets(batch, batch_images)) is not None:
                        multi_hot.append(hot.detach().cpu())
                    elif (found := regression_targets(batch, batch_images)) is not None:
                        values.append(found.detach().cpu())
                if multi_hot:
                    seen = int(torch.cat(multi_hot).any(dim=0).sum())
                else:
                    seen = torch.cat(labels).unique().numel() if labels else len(mask_classes)
                classes_seen.append(seen)
                count = sum(len(b) for b in images)
                all_classes = (
                    not (labels or masks or multi_hot)
                    or classes_seen[-1] >= wanted
                    or (n is None and len(set(classes_seen[-3:])) == 1)
                )
                pool = VALUE_POOL * wanted if values else wanted
                if index + 1 >= max_batches or (count >= pool and all_classes):
                    break
        if not images:
            raise ValueError("the dataloader yielded no batch to pick probes from")
        all_images = torch.cat(images)
        normalization = dataset_normalization(loader)
        if n is None:
            n = min(MAX_PICKED, max(MIN_PICKED, classes_seen[-1]))
        if masks and len(masks) == len(images) and mask_classes:
            all_masks = torch.cat(masks)
            chosen, classes = _segmented_order(all_masks, max(mask_classes) + 1)
            chosen, classes = chosen[:n], classes[:n]
            class_masks = all_masks[chosen] == classes[:, None, None]
            shown = all_images[chosen]
            display = unnormalized(shown, normalization)
            return cls(shown, classes, display, masks=class_masks)
        if multi_hot and len(multi_hot) == len(images):
            if all(bool((hot.sum(dim=1) == 1).all()) for hot in multi_hot):  # one-hot: 1 class
                labels = [hot.float().argmax(dim=1) for hot in multi_hot]
            else:
                chosen, classes = _multi_hot_order(torch.cat(multi_hot))
                shown = all_images[chosen[:n]]
                display = unnormalized(shown, normalization)
                return cls(shown, classes[:n], display, multi_label=True)
        all_values = torch.cat(values) if values and len(values) == len(images) else None
        if all_values is not None and bool(all_values.isfinite().all()):
            ranked = all_values.argsort(stable=True)
            chosen = ranked[torch.linspace(0, len(ranked) - 1, min(n, len(ranked))).round().long()]
            shown = all_images[chosen]
            display = unnormalized(shown, normalization)
            return cls(shown, display=display, values=all_values[chosen])
        all_labels = torch.cat(labels) if len(labels) == len(images) else None
        order = (
            _class_first_order(all_labels)
            if all_labels is not None
            else torch.arange(len(all_images))
        )
        chosen = order[:n]
        labels = None if all_labels is None else all_labels[chosen]
        shown = all_images[chosen]
        return cls(shown, labels, unnormalized(shown, normalization))

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | Path],
        transform: Callable[[Any], Tensor],
        labels: Sequence[int] | None = None,
    ) -> Probes:
        """Load image files with PIL (as RGB) and ``transform`` each to a (C, H, W) tensor."""
        from PIL import Image

        if not paths:
            raise ValueError("`paths` is empty: give at least one image file")
        tensors = []
        for path in paths:
            with Image.open(path) as image:
                tensors.append(transform(image.convert("RGB")))
        return cls(torch.stack(tensors), None if labels is None else torch.as_tensor(labels))


def dataset_normalization(loader: Iterable) -> tuple[Tensor, Tensor] | None:
    """The per-channel (mean, std) of the torchvision ``Normalize`` (or pretrained weights'
    preset, which ends by normalizing) in the transform of the loader's dataset (or of a
    ``Subset``'s), the last where several; None without one."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None:
        found = _normalize_in(getattr(dataset, "transform", None))
        if found is not None:
            return found
        dataset = getattr(dataset, "dataset", None)
    return None


def _normalize_in(transform: Any) -> tuple[Tensor, Tensor] | None:
    steps = getattr(transform, "transforms", None)
    if steps is None:
        # torchvision's pretrained weights' presets (ResNet18_Weights.DEFAULT.transforms())
        # normalize by their mean and std last, without a Normalize in them
        preset = type(transform).__module__ == "torchvision.transforms._presets"
        is_normalize = type(transform).__name__ == "Normalize" or preset
        if is_normalize and hasattr(transform, "mean") and hasattr(transform, "std"):
            return torch.as_tensor(transform.mean).float(), torch.as_tensor(transform.std).float()
        return None
    return next((found for step in reversed(steps) if (found := _normalize_in(step))), None)


def _in_dataset_order(loader: Iterable) -> Iterable:
    """An unshuffled single-process view of a map-style DataLoader; other iterables unchanged."""
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size or 64,
        shuffle=False,
        collate_fn=loader.collate_fn,
    )


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """(images, labels or None) from a tensor, an (images, labels, ...) sequence or a dict."""
    images = labels = None
    if isinstance(batch, Tensor):
        images = batch
    elif isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        images = batch[0]
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
    elif isinstance(batch, dict):
        tensors = {k: v for k, v in batch.items() if isinstance(v, Tensor)}
        known = [tensors[k] for k in _IMAGE_KEYS if k in tensors]
        images = next(iter(known), None)
        if images is None:  # any other key: the first 4-D tensor of image-like values
            images = next((v for v in tensors.values() if _looks_like_images(v)), None)
        labels = next((tensors[k] for k in _LABEL_KEYS if k in tensors), None)
        if labels is None and images is not None:
            labels = next((v for v in tensors.values() if _looks_like_labels(v, images)), None)
    if images is None or images.dim() != 4:
        raise ValueError(
            f"cannot find (N, C, H, W) images in a batch of type {type(batch).__name__}"
            + _why_no_images(images)
        )
    if labels is not None and (labels.shape != images.shape[:1] or labels.dtype.is_floating_point):
        labels = None
    return images, labels


def split_batch_with(
    batch_to_images: BatchToImages,
) -> Callable[[Any], tuple[Tensor, Tensor | None]]:
    def split(batch: Any) -> tuple[Tensor, Tensor | None]:
        found = batch_to_images(batch)
        images, labels = found if isinstance(found, tuple) else (found, None)
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"batch_to_images must return (N, C, H, W) images, got {shape}")
        return images, labels

    return split


OR_PROBES = ", or probes=Probes(images, labels)"
"""The probe views' other way round a batch without images (not the validation views')."""


def _why_no_images(found: Tensor | None) -> str:
    """What :func:`split_batch` found instead of images, and what the user can do."""
    advice = f"pass batch_to_images= to say where they are{OR_PROBES}"
    if found is None:
        return f"; {advice}"
    shape = f"its inputs have shape {tuple(found.shape)}, not (N, C, H, W)"
    if found.dim() == 3:
        rows, columns = found.shape[1:]
        if rows < 4 or columns > 16 * rows:  # (N, 1, 256): a signal, not a grey image
            return (
                f" ({shape}): 1-D signals (N, C, L) are not supported; FilterMonitor still "
                "reads the model's conv weights"
            )
        return (
            f" ({shape}): 1-D signals (N, C, L) are not supported; grey images without a "
            "channel dimension (N, H, W) are: pass batch_to_images=lambda batch: "
            "(batch[0][:, None], batch[1])"
        )
    if found.dim() == 5:
        return (
            f" ({shape}): 3-D volumes (N, C, D, H, W) are not supported; FilterMonitor and "
            "ActivationMonitor still read the model"
        )
    return f" ({shape}); {advice}"


def _looks_like_images(values: Tensor) -> bool:
    return values.dim() == 4 and (values.dtype.is_floating_point or values.dtype == torch.uint8)


def _looks_like_labels(values: Tensor, images: Tensor) -> bool:
    integer = not values.dtype.is_floating_point and values.dtype != torch.bool
    return integer and values.shape == images.shape[:1]


IGNORED_MASK_VALUES = (255,)
"""Mask values that are no class (besides negative ones): the "ignore" borders of Pascal VOC
and Cityscapes."""
MAX_MASK_CLASS = 1023
"""Masks whose values (ignored ones aside) pass this are no class ids (depth, instance ids)."""
_MASK_KEYS = ("mask", "masks", "label", "labels", "target", "targets", "segmentation", "y")


def _targets(batch: Any, keys: Sequence[str]) -> list[Any]:
    """What may be a batch's targets: a sequence's second element, or a dict's under ``keys``."""
    if isinstance(batch, (list, tuple)):
        return list(batch[1:2])
    if isinstance(batch, dict):
        return [batch[key] for key in keys if key in batch]
    return []


def _masks(batch: Any, images: Tensor) -> Tensor | None:
    """The batch's segmentation masks: an integer (N, H, W) tensor the images' size, second in
    a sequence or under a mask or label key of a dict, whose values are class ids
    (:data:`MAX_MASK_CLASS`); None without one."""
    n, _, height, width = images.shape
    for value in _targets(batch, _MASK_KEYS):
        if (
            isinstance(value, Tensor)
            and value is not images
            and not value.dtype.is_floating_point
            and value.dtype != torch.bool
            and value.shape == (n, height, width)
            and all(c <= MAX_MASK_CLASS for c in _class_ids(value.unique()).tolist())
        ):
            return value
    return None


def multi_hot_targets(batch: Any, images: Tensor) -> Tensor | None:
    """The batch's multi-hot targets: an (N, K) tensor of 0s and 1s (K >= 2) second in a
    sequence or under a label key of a dict, as a multi-label classifier trains on; None
    without one."""
    for value in _targets(batch, _LABEL_KEYS):
        if (
            isinstance(value, Tensor)
            and value.dim() == 2
            and value.shape[0] == images.shape[0]
            and value.shape[1] >= 2
            and bool(((value == 0) | (value == 1)).all())
        ):
            return value != 0
    return None


def regression_targets(batch: Any, images: Tensor) -> Tensor | None:
    """The batch's float targets (:func:`float_targets`) second in a sequence or under a label
    key of a dict; None without them."""
    found = (float_targets(value, images.shape[0]) for value in _targets(batch, _LABEL_KEYS))
    return next((values for values in found if values is not None), None)


def float_targets(value: Any, n: int) -> Tensor | None:
    """``value`` as (n,) float targets, if it is an (n,) or (n, 1) float tensor, as a regressor
    (or a single-logit classifier under ``BCEWithLogitsLoss``) trains on; else None. Read by
    shape and dtype alone, with no host sync (a validation view reads every batch's): whoever
    uses the values checks they are finite."""
    if (
        isinstance(value, Tensor)
        and value.dtype.is_floating_point
        and value.shape in ((n,), (n, 1))
    ):
        return value.reshape(-1)
    return None


def _multi_hot_order(targets: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of images and the class each is picked for, from (N, K) multi-hot targets: per
    class (ascending), the first image it is on with the fewest classes on (the clearest
    example), then the rest in order, each for its class picked least so far (each for its
    first class, half the probes explained class 0); images with no class on are left out."""
    chosen: list[int] = []
    picked_for: list[int] = []
    on_count = targets.sum(dim=1)
    for c in range(targets.shape[1]):
        candidates = [i for i in targets[:, c].nonzero().flatten().tolist() if i not in chosen]
        if candidates:
            chosen.append(min(candidates, key=lambda i: (int(on_count[i]), i)))
            picked_for.append(c)
    for i in range(len(targets)):
        if i not in chosen and targets[i].any():
            chosen.append(i)
            on = targets[i].nonzero().flatten().tolist()
            picked_for.append(min(on, key=lambda c: (picked_for.count(c), c)))
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(picked_for, dtype=torch.long)


def _class_ids(values: Tensor) -> Tensor:
    """The mask ``values`` that are class ids: ignored ones (< 0, 255) left out."""
    return values[(values >= 0) & ~torch.isin(values, torch.tensor(IGNORED_MASK_VALUES))]


def _segmented_order(masks: Tensor, classes: int) -> tuple[Tensor, Tensor]:
    """Indices of images and the class each is picked for: per class (ascending) besides the
    one covering most pixels of all, the image it covers most; then the rest in order, each for
    the class it shows most besides that one (that one where it shows nothing else)."""
    counts = torch.stack(
        [torch.bincount(_class_ids(m).long(), minlength=classes) for m in masks.flatten(1)]
    )
    dominant = int(counts.sum(dim=0).argmax())
    others = counts.clone()
    others[:, dominant] = 0
    chosen: list[int] = []
    picked_for: list[int] = []
    for c in range(classes):
        ranked = others[:, c].argsort(descending=True, stable=True).tolist()
        best = next((i for i in ranked if i not in chosen and others[i, c] > 0), None)
        if best is not None:
            chosen.append(best)
            picked_for.append(c)
    for i in range(len(masks)):
        if i not in chosen and counts[i].any():
            chosen.append(i)
            picked_for.append(int(others[i].argmax()) if others[i].any() else dominant)
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(picked_for, dtype=torch.long)


def _class_first_order(labels: Tensor) -> Tensor:
    """Indices: the first image of each class (classes ascending), then the rest in order."""
    firsts = [int((labels == c).nonzero()[0]) for c in labels.unique().tolist()]
    rest = [i for i in range(len(labels)) if i not in set(firsts)]
    return torch.tensor(firsts + rest, dtype=torch.long)


@contextmanager
def preserved_rng(seed: int) -> Iterator[None]:
    """Run the block under ``seed``; the global generators get their state back after it."""
    with untouched_rng():
        torch.manual_seed(seed)
        yield
