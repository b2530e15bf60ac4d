"""What the views over the validation set share: they ride on the validation forward the Trainer
runs anyway, with hooks that live for one batch."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytorch_lightning as pl
from torch import Tensor
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_viz._compat import compiled_parts, fit_dataloaders, is_overridden
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.base import VizCallback
from lightning_viz.callbacks.probe_base import Unsuited
from lightning_viz.functional._validation import check_int
from lightning_viz.functional.images import unnormalized
from lightning_viz.probes import (
    OR_PROBES,
    BatchToImages,
    dataset_normalization,
    float_targets,
    multi_hot_targets,
    regression_targets,
    split_batch,
    split_batch_with,
)

"""Where the images (and labels) are in a batch that is not a tensor, an ``(images, labels, ...)``
sequence or a dict: returns the (N, C, H, W) images, or ``(images, labels)``."""


class ValidationView(VizCallback):
    """Base of the callbacks that look at the validation set through the forward passes of the
    validation loop: no extra forward.

    In a logged validation epoch of a fit (every ``every_n_epochs``, the first validation of the
    training epoch where ``val_check_interval`` runs several, not the sanity check, the first
    validation dataloader; ``trainer.validate`` alone is not watched), each batch's images
    and labels are read from the batch, the subclass's forward hooks live from the batch's start
    to its end (and are removed on an exception), and the images' positions in the epoch's
    stream (0, 1, ... in loader order) say which images they are. Global rank 0 only, and no
    collective: under DDP the view covers rank 0's share of the validation set. A validation
    loader that shuffles shows other images every epoch (Lightning warns about it).

    Subclasses implement :meth:`resolve` (at fit start), :meth:`begin_epoch`, :meth:`hooks`
    (for a batch), :meth:`end_epoch` (compute and log).
    """

    view = "validation views"

    def __init__(
        self,
        every_n_epochs: int = 1,
        batch_to_images: BatchToImages | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        image_origin: str = "upper",
    ) -> None:
        super().__init__(on_alert=on_alert, strict=strict, budget=budget, image_origin=image_origin)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs)
        if batch_to_images is not None and not callable(batch_to_images):
            raise ValueError(
                f"`batch_to_images` must be None or a callable, got {batch_to_images!r}"
            )
        self._given_split = batch_to_images is not None
        self._split = split_batch if batch_to_images is None else split_batch_with(batch_to_images)
        self._riding = False
        self._position = 0
        # whether the epoch's first batch has multi-hot targets (N, K) where it has no labels
        self.multi_hot = False
        self._trainer: pl.Trainer | None = None
        self._handles: list[RemovableHandle] = []
        self._problems: list[str] = []
        self._rode_epoch: int | None = None  # the training epoch whose validation it read
        self._normalization: tuple[Tensor, Tensor] | None = None  # the loader's Normalize

    # ----------------------------------------------------------------------- subclass API
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Choose the layers at fit start; raise :class:`Unsuited` when the model does not suit
        the defaults (user-set arguments raise ValueError)."""

    def begin_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reset what one logged validation epoch gathers."""

    def hooks(
        self, pl_module: pl.LightningModule, images: Tensor, labels: Tensor | None, first: int
    ) -> list[RemovableHandle]:
        """The forward hooks for one batch whose images are at stream positions ``first``,
        ``first + 1``, ...; none when the batch holds nothing the view needs. ``labels``: the
        batch's class labels, its float targets (a regressor's), or None."""
        return []

    def end_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Compute and log what the epoch gathered (rank 0; failures become alerts; raise
        :class:`Unsuited` when the validation forward never ran the view's layers)."""

    def timing(self) -> AbstractContextManager[None]:
        """Count a hook's time as this callback's cost (``lightning_viz/overhead``)."""
        return self.timed(self._trainer) if self._trainer is not None else nullcontext()

    def displayed(self, images: Tensor) -> Tensor | None:
        """``images`` as the validation dataset had them before its torchvision ``Normalize``,
        in [0, 1] RGB, for display; None (min-max normalize them) without one."""
        return unnormalized(images, self._normalization)

    def problem(self, what: str) -> None:
        """Note a failure inside a hook (a hook must never break the validation step): the
        epoch's view is skipped with an alert saying what went wrong."""
        self._problems.append(what)

    # ----------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        self._rode_epoch = None
        compiled = compiled_parts(pl_module)
        if compiled:
            where = "the LightningModule's forward" if compiled[0] == "" else repr(compiled[0])
            self.show_nothing(
                f"it reads the validation forward through hooks, but {where} is torch.compile'd "
                "and compiled code skips hooks added after compilation. Use it on an "
                "uncompiled run."
            )
            return
        try:
            self.resolve(trainer, pl_module)
        except Unsuited as why:
            self.show_nothing(str(why))

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        validation = next(fit_dataloaders(trainer))
        several = isinstance(validation, (list, tuple))
        first = (validation[0] if validation else None) if several else validation
        self._normalization = dataset_normalization(first)
        if trainer.limit_val_batches == 0:
            why = "limit_val_batches=0 turns the Trainer's validation off"
        elif validation is None or not is_overridden("validation_step", pl_module):
            why = (
                "this fit has no validation loop: define validation_step and pass "
                "val_dataloaders (or a datamodule with val_dataloader()) to trainer.fit"
            )
        else:
            return
        self.show_nothing(f"the view is read from the validation forward, and {why}.", trainer)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._riding = (
            self.showing
            and trainer.state.fn == "fit"
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
            # one entry per epoch: val_check_interval=0.25 made four, each bypassing the
            # budget in the last epoch
            and self._rode_epoch != trainer.current_epoch
            and self.within_budget(trainer, f"the {self.view} of an epoch", per_epoch=True)
        )
        if self._riding:
            self._rode_epoch = trainer.current_epoch
        self._position = 0
        self._problems = []
        self._trainer = trainer
        if self._riding:
            with self.timed(trainer):
                self.begin_epoch(trainer, pl_module)

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._riding or dataloader_idx != 0 or self._problems:
            return
        with self.timed(trainer):
            self._remove_hooks()
            try:
                images, labels = self._images_of(batch)
                if self._position == 0:
                    self.multi_hot = labels is None and multi_hot_targets(batch, images) is not None
                if labels is None and not self._given_split:
                    labels = regression_targets(batch, images)
                elif labels is not None and labels.dtype.is_floating_point:  # batch_to_images's
                    labels = float_targets(labels, images.shape[0])
                self._handles = self.hooks(pl_module, images, labels, self._position)
            except Unsuited as why:
                self._riding = False
                self.show_nothing(str(why), trainer)
                return
            except Exception as error:  # the validation step must go on
                self.problem(f"{type(error).__name__}: {error}")
                return
            self._position += images.shape[0]

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._remove_hooks()

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        if not self._riding:
            return
        self._riding = False
        with self.timed(trainer), self.guarded(trainer, type(self).__name__):
            if self._problems:
                raise ValueError("; ".join(dict.fromkeys(self._problems)))
            try:
                self.end_epoch(trainer, pl_module)
            except Unsuited as why:
                self.show_nothing(str(why), trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()
        super().on_exception(trainer, pl_module, exception)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._remove_hooks()

    def _images_of(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """The batch's images and labels; batches it cannot read make the view :class:`Unsuited`
        unless ``batch_to_images`` was given."""
        try:
            return self._split(batch)
        except ValueError as error:
            if self._given_split:
                raise
            why = error.args[0].replace(OR_PROBES, "")
            raise Unsuited(f"{type(self).__name__}: in the validation loader, {why}.") from error

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
