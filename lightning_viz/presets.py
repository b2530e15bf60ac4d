"""Every lightning-viz callback in one line."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
from torch import Tensor

from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks import (
    ActivationGridLogger,
    ActivationMonitor,
    CAMLogger,
    DeconvLogger,
    EmbeddingLogger,
    FeatureVisualizer,
    FilterMonitor,
    GradCAMLogger,
    LIMELogger,
    OcclusionLogger,
    SaliencyLogger,
    TopPatchesLogger,
)
from lightning_viz.callbacks.base import VizCallback
from lightning_viz.callbacks.class_view import ClassView
from lightning_viz.functional.gradcam import OutputTransform
from lightning_viz.probes import BatchToImages, Probes

DEFAULT_BUDGET = 0.02
"""The share of training time :func:`default_callbacks` may take together."""


def default_callbacks(
    probes: Probes | None = None,
    on_alert: OnAlert = "warn",
    activations: bool = True,
    budget: float | None = DEFAULT_BUDGET,
    extra_views: bool = False,
    forward_fn: Callable[[pl.LightningModule, Tensor], Any] | None = None,
    batch_to_images: BatchToImages | None = None,
    probability: str | None = None,
    output_transform: OutputTransform | None = None,
    class_names: Sequence[str] | None = None,
    image_origin: str = "upper",
) -> list[VizCallback]:
    """FilterMonitor, ActivationMonitor, GradCAMLogger, DeconvLogger and ActivationGridLogger
    with their defaults; with ``extra_views`` also the probe views that cost more per epoch or
    repeat Grad-CAM: OcclusionLogger, SaliencyLogger (SmoothGrad), LIMELogger, CAMLogger and
    FeatureVisualizer, and the views over the validation set: EmbeddingLogger and
    TopPatchesLogger.

    The probe loggers share one probe set: ``probes``, or one per class (at least 8, at most 16)
    picked from the validation dataloader at fit start.

    Args:
        probes: the probe images of the probe views; None picks them.
        on_alert: ``"warn"``, ``"stop"`` or a callable, for every callback.
        activations: include the ActivationMonitor (leave it out for a torch.compile'd model,
            whose compiled training forward cannot be hooked).
        budget: the share of training time the callbacks may take together (2% by default;
            counted from the first step: the work before it is done once): past it, the
            ActivationMonitor stretches its cadence and the probe views skip epochs until it
            holds, with one ``over_budget`` notice; None never skips. FilterMonitor
            measures every epoch (and every 500 optimizer steps within a longer one) whatever
            the budget (its health alerts should not wait; its time still counts in the share);
            only its filter images skip epochs.
        extra_views: add the opt-in probe views (each costs a few training steps per logged
            epoch on small nets, see the README's performance section; CAM shows only for
            networks that end in global average pooling + a linear layer, with one notice
            otherwise) and the validation views (they ride on the validation forward; without
            a validation loop each says so once).
        forward_fn: how the probe views (and TopPatchesLogger, for its receptive fields) run
            the model on a batch of images, ``forward_fn(pl_module, images)`` (a GAN's
            discriminator, a model with other inputs fixed inside it); default
            ``pl_module(images)``.
        batch_to_images: where every view finds the images and labels in a batch that is not
            a tensor, an ``(images, labels, ...)`` sequence or a dict (the probe views, to pick
            their probes from the data; the validation views, in every validation batch):
            ``batch_to_images(batch)`` returns the images or ``(images, labels)``.
        probability: how the views that explain a class read its probability: ``"softmax"``
            (one class per image) or ``"sigmoid"`` (a multi-label model, or a single-logit
            binary classifier, trained with ``BCEWithLogitsLoss``); default sigmoid for probes
            picked from multi-hot targets, else softmax; see ``GradCAMLogger``.
        output_transform: how the views that explain a class find the class scores in the
            model's output (a detector's, a dict with other keys); see ``GradCAMLogger``.
        class_names: the names every view draws for class indices (the views that name
            classes); default the datamodule's or dataset's ``classes``, else the indices.
        image_origin: ``"lower"`` draws every image (and the maps over it) with its first row
            at the bottom: for spectrograms stored with the lowest frequency in row 0; default
            ``"upper"``, as photos are stored.

    Example::

        callbacks = lightning_viz.default_callbacks()
        trainer = Trainer(callbacks=callbacks, logger=TensorBoardLogger("logs"))
    """
    # the filter measurement carries the health alerts and never waits; its images keep the budget
    callbacks: list[VizCallback] = [
        FilterMonitor(on_alert=on_alert, budget=budget, image_origin=image_origin)
    ]
    if activations:
        callbacks.append(ActivationMonitor(on_alert=on_alert, budget=budget))
    probe_views = [GradCAMLogger, DeconvLogger, ActivationGridLogger]
    if extra_views:
        probe_views += [OcclusionLogger, SaliencyLogger, LIMELogger, CAMLogger, FeatureVisualizer]
    callbacks += [
        view(
            probes=probes,
            forward_fn=forward_fn,
            batch_to_images=batch_to_images,
            on_alert=on_alert,
            budget=budget,
            image_origin=image_origin,
            **(
                {"probability": probability, "output_transform": output_transform}
                if issubclass(view, ClassView)
                else {}
            ),
            **_names(view, class_names),
        )
        for view in probe_views
    ]
    if extra_views:
        callbacks += [
            view(
                batch_to_images=batch_to_images,
                on_alert=on_alert,
                budget=budget,
                image_origin=image_origin,
                **({"forward_fn": forward_fn} if view is TopPatchesLogger else {}),
                **_names(view, class_names),
            )
            for view in (EmbeddingLogger, TopPatchesLogger)
        ]
    return callbacks


def _names(view: type[VizCallback], class_names: Sequence[str] | None) -> dict[str, Any]:
    """``class_names=`` for a view that draws class names."""
    takes = "class_names" in inspect.signature(view).parameters
    return {"class_names": class_names} if takes and class_names is not None else {}
