"""What the probe callbacks share: one probe set per Trainer, checked at fit start, eval passes."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_viz._compat import (
    eager,
    fit_dataloaders,
    precision_dtype,
    progress_note,
    sharded_strategy,
)
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.base import RunContext, VizCallback
from lightning_viz.functional._capture import Forward, grid_side, output_shapes
from lightning_viz.functional._pass import untouched_rng
from lightning_viz.functional._validation import (
    check_class_names,
    check_int,
    check_layer_names,
)
from lightning_viz.functional.captions import class_name, fits, footnote, stack_rows, with_name
from lightning_viz.probes import BatchToImages, Probes

SLOW_RENDER_SECONDS = 1.0
"""A probe visualization that takes longer says so in a log line, with its duration (the first
such render of a fit)."""


class Unsuited(Exception):
    """The model does not suit a probe callback with its default arguments: the callback shows
    nothing for this fit and says why, once (the message says which argument enables it)."""


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the block; afterwards every submodule gets its own train flag back."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for submodule, training in flags.items():
            submodule.training = training


class ReentrantCheckpoint(RuntimeError):
    """The model ran reentrant activation checkpointing in a probe pass, which refuses the
    gradients the views take."""

    def __init__(self) -> None:
        super().__init__(
            "the model runs torch.utils.checkpoint with use_reentrant=True in the probe pass (eval "
            "mode, autograd on), which refuses the gradients this view needs. Checkpoint only "
            "while self.training, or pass use_reentrant=False: training computes the same either "
            "way"
        )


_CHECKPOINT_WARNING = "None of the inputs have requires_grad=True"


@contextmanager
def reentrant_checkpoint_explained() -> Iterator[None]:
    """A model that runs reentrant activation checkpointing in a probe pass (switched on
    always, not by ``self.training``) fails the views' gradients with torch's words, which do
    not say why ("One of the differentiated Tensors does not require grad"), and torch warns at
    each checkpoint the probes' pass runs (330 warnings in a user's fit): those warnings are
    kept from the user, and such a failure says what to change."""
    seen = False
    with warnings.catch_warnings():
        show = warnings.showwarning

        def show_others(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
            nonlocal seen
            if _CHECKPOINT_WARNING in str(message):
                seen = True
            else:
                show(message, category, *args, **kwargs)

        warnings.showwarning = show_others
        warnings.filterwarnings("always", message=_CHECKPOINT_WARNING)
        try:
            yield
        except Exception as error:
            if seen or "When use_reentrant=True, torch.utils.checkpoint" in str(error):
                raise ReentrantCheckpoint from error
            raise


@contextmanager
def probe_pass(module: nn.Module) -> Iterator[None]:
    """Eval mode with flags restored, torch.compile'd code run eagerly so hooks fire, the
    global random generators as they were (a forward may draw noise in eval mode too), and a
    reentrant checkpoint's failure explained."""
    with eval_mode(module), eager(), untouched_rng(), reentrant_checkpoint_explained():
        yield


def class_names_of(trainer: pl.Trainer) -> list[str] | None:
    """Class names from the datamodule (``classes`` or ``class_names``), else from the probe
    loader's dataset (torchvision datasets' ``classes``, through ``Subset``); None if neither."""
    sources = [getattr(trainer, "datamodule", None)]
    try:
        dataset = getattr(default_probe_loader(trainer)[0], "dataset", None)
    except ValueError:
        dataset = None
    while dataset is not None:
        sources.append(dataset)
        dataset = getattr(dataset, "dataset", None)  # a Subset's
    for source in sources:
        for attribute in ("classes", "class_names"):
            names = getattr(source, attribute, None)
            if isinstance(names, (list, tuple)) and names:
                return [str(name) for name in names]
    return None


def in_training_precision(
    pl_module: pl.LightningModule, forward: Forward | None = None
) -> Forward | None:
    """``forward`` (default the module) on images cast as the Trainer casts a batch where its
    precision sets the model's dtype (``precision="bf16-true"``: the probe passes' fp32 copies
    would not match it; autograd casts the gradients back); ``forward`` itself elsewhere."""
    dtype = precision_dtype(pl_module.trainer)
    if dtype is None:
        return forward
    run = forward or pl_module
    return lambda images: run(images.to(dtype))


def forward_with(
    pl_module: pl.LightningModule,
    forward_fn: Callable[[pl.LightningModule, torch.Tensor], Any] | None,
) -> Forward | None:
    """How to run the model on images alone: ``forward_fn(pl_module, images)`` when given, else
    None (``pl_module(images)``); on images cast as the Trainer casts a batch."""
    given = None if forward_fn is None else functools.partial(forward_fn, pl_module)
    return in_training_precision(pl_module, given)


def default_probe_loader(trainer: pl.Trainer) -> tuple[Any, str]:
    """The validation dataloader of the fit, else the training one (the first of several), and
    which it is: ``"validation"`` or ``"training"``."""
    for loader, source in zip(fit_dataloaders(trainer), ("validation", "training"), strict=True):
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        elif isinstance(loader, dict):
            loader = next(iter(loader.values()), None)
        if loader is not None:
            return loader, source
    raise ValueError("no dataloader to pick probes from: pass probes=Probes(images, labels)")


class ProbeCallback(VizCallback):
    """Base of the callbacks that look at the model through fixed probe images.

    Probe passes run torch.compile'd code eagerly (``torch.compiler.set_stance("force_eager")``)
    so that their hooks fire; training steps are not affected.

    Probes are resolved when training starts: the user's, else those another probe callback of
    the same Trainer already picked, else ``num_probes`` picked from the validation dataloader
    (the training one when there is none). They live on the module's device and in the state
    dict, so a resumed run uses the same ones.
    """

    at_fit_start = True
    """Whether to visualize at fit start, before any training (the untrained baseline)."""

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        probes: Probes | None = None,
        num_probes: int | None = None,
        every_n_epochs: int = 1,
        forward_fn: Callable[[pl.LightningModule, torch.Tensor], Any] | None = None,
        batch_to_images: BatchToImages | None = None,
        class_names: Sequence[str] | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        image_origin: str = "upper",
    ) -> None:
        super().__init__(on_alert=on_alert, strict=strict, budget=budget, image_origin=image_origin)
        self.given_class_names = check_class_names(class_names)
        self.class_names: list[str] | None = self.given_class_names
        self.layer_names = check_layer_names(layers)
        if forward_fn is not None and not callable(forward_fn):
            raise ValueError(f"`forward_fn` must be None or a callable, got {forward_fn!r}")
        self.forward_fn = forward_fn
        if batch_to_images is not None and not callable(batch_to_images):
            raise ValueError(
                f"`batch_to_images` must be None or a callable, got {batch_to_images!r}"
            )
        self.batch_to_images = batch_to_images
        if probes is not None and not isinstance(probes, Probes):
            raise ValueError(
                f"`probes` must be a lightning_viz.Probes or None, got {type(probes).__name__}"
            )
        self.user_probes = probes
        self.num_probes = None if num_probes is None else check_int("num_probes", num_probes)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs)
        self.probes: Probes | None = None
        self._from_training = False  # picked from the training data: no validation data
        self._said_slow = False

    # ----------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        sharded = sharded_strategy(trainer)
        if stage == "fit" and sharded is not None:
            self.show_nothing(
                f"the {sharded} shards the parameters across ranks, and a probe pass on rank 0 "
                "alone would wait forever for the other ranks' shards (sharded strategies are "
                "not supported yet)."
            )

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resumed = self.probes is not None
        self._said_slow = False
        self.class_names = self.given_class_names or class_names_of(trainer)
        try:
            self.probes = self._resolve_probes(trainer).to(pl_module.device)
            output = self._check_probes(pl_module)
            with probe_pass(pl_module):
                self.prepare(pl_module, self.probes, output)
        except Unsuited as why:
            self.show_nothing(str(why), trainer)
            return
        except ValueError:  # the checks of the user's own arguments
            raise
        except Exception as error:  # the model's own failure on a probe pass: training goes on
            cause = str(error).splitlines()[0] if str(error) else ""
            self.show_nothing(
                f"{type(self).__name__}: preparing it on a probe failed ({type(error).__name__}: "
                f"{cause}); it needs a forward and backward of the probes with autograd on",
                trainer,
            )
            return
        if self.at_fit_start and not resumed:
            RunContext.of(trainer).rendering(trainer)
            self._run(trainer, pl_module)

    @override
    def epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 and self.within_budget(
            trainer, f"the {self.view} of an epoch", per_epoch=True
        ):
            self._run(trainer, pl_module)

    @override
    def owed_work(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.probes is not None:
            state["probes"] = self.probes.state_dict()
        return state

    @override
    def reset_state(self) -> None:
        super().reset_state()
        self.probes = None

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "probes" in state_dict:
            self.probes = Probes.from_state_dict(state_dict["probes"])

    # ------------------------------------------------------------------------- internals
    def _resolve_probes(self, trainer: pl.Trainer) -> Probes:
        if self.probes is not None:
            return self.probes
        if self.user_probes is not None:
            return self.user_probes
        picked = RunContext.of(trainer).picked_probes
        key = (self.num_probes, self.batch_to_images)
        if key not in picked:
            try:
                loader, source = default_probe_loader(trainer)
                probes = Probes.from_dataloader(
                    loader, n=self.num_probes, batch_to_images=self.batch_to_images
                )
            except ValueError as error:
                raise Unsuited(f"{error}") from None
            picked[key] = (probes, source)
        probes, source = picked[key]
        self._from_training = source == "training"
        return probes

    def _check_probes(self, pl_module: pl.LightningModule) -> Any:
        """The model's output on the first probe, after checking that the probes fit the model:
        the user's probes fail at fit start, clearly; picked ones make the callback
        :class:`Unsuited` (a working run is never broken by a default)."""
        probes, source = self.probes, type(self).__name__
        problem = (
            ValueError if self.user_probes is not None or self.forward_fn is not None else Unsuited
        )
        first_conv = next(
            ((n, m) for n, m in pl_module.named_modules() if isinstance(m, nn.Conv2d)), None
        )
        if first_conv is not None and first_conv[1].in_channels != probes.images.shape[1]:
            raise problem(
                f"{source}: the probes have {probes.images.shape[1]} channels but the model's "
                f"first conv layer {first_conv[0]!r} expects {first_conv[1].in_channels}; pass "
                "probes= with images the model takes"
            )
        try:
            with probe_pass(pl_module), torch.no_grad():
                return (self.probe_forward(pl_module) or pl_module)(probes.images[:1])
        except Exception as error:
            raise problem(
                f"{source}: the model cannot run on the first probe, of shape "
                f"{tuple(probes.images[:1].shape)} (of {len(probes)}): {type(error).__name__}: "
                f"{error}. Pass probes= the model takes, or forward_fn=(pl_module, images) -> "
                "output to say how to run it on a batch of them."
            ) from error

    def _check_named_layers(
        self, pl_module: pl.LightningModule, probes: Probes, tokens: bool
    ) -> None:
        """Fail at fit start when a layer named in ``layers=`` did not run on a probe or gives
        no (N, C, H, W) map (nor, with ``tokens``, a token map): not once per epoch later."""
        if self.layer_names is None:
            return
        forward = self.probe_forward(pl_module)
        shapes = {
            name: shape for name, _, shape in output_shapes(pl_module, probes.images[:1], forward)
        }
        for name in self.layer_names:
            shape = shapes.get(name)
            if shape is None:
                raise ValueError(
                    f"{type(self).__name__}: layer {name!r} did not run (or returned no tensor) "
                    "in the model's forward on a probe"
                )
            if len(shape) != 4 and not (tokens and grid_side(shape) is not None):
                wanted = "(N, C, H, W) or (N, tokens, dim)" if tokens else "(N, C, H, W)"
                raise ValueError(
                    f"{type(self).__name__}: layer {name!r} returns shape {shape}; it needs a "
                    f"{wanted} feature map"
                )

    @override
    def watching(self) -> str:
        layers = (
            ", ".join(self._layers) if len(self._layers) <= 2 else f"{len(self._layers)} layers"
        )
        return f"{self.view} of {layers} {self.on_probes}"

    @property
    def on_probes(self) -> str:
        """ "on N probes" for the "watching" line, which says when they have no labels (the
        views then explain the predicted class; a batch whose labels are not its second
        element needs ``batch_to_images=``) and when they came from the training data."""
        labelled = "" if self.probe_target(self.probes, 0) is not None else "unlabelled "
        where = " from the training data (no validation data)" if self._from_training else ""
        return f"on {len(self.probes)} {labelled}probes{where}"

    view = "probe views"
    """What the callback shows, for the line printed at fit start."""

    def probe_caption(self, probes: Probes, index: int, width: int) -> str:
        """What a probe's tile, ``width`` pixels wide, says: "true <class>" when it has a label,
        the class name alone where "true " would cut it ("true green s…" could be a green
        square or a green star), shortened where even that does not fit
        (:func:`~lightning_viz.functional.captions.with_name`), "true <value>" when it has a
        float target, else its index."""
        name = self.probe_target(probes, index)
        if name is None:
            return f"probe {index}"
        labelled = f"true {name}"
        return (
            labelled
            if fits(labelled, width)
            else with_name("{}", name, width, self.class_names or ())
        )

    def probe_names(self, probes: Probes, indices: Sequence[int]) -> str:
        """Probes as a note under a picture names them, by index and by what their tile says:
        "probes 2 (true 3), 5 (true 6)". The tiles carry no index, and a segmenter's probe 2
        shows its class 3: a note that named the index alone pointed at the wrong tiles. All
        of them (more than one): "every probe"."""
        if len(indices) > 1 and len(set(indices)) == len(probes):
            return "every probe"
        names = []
        for index in indices:
            target = self.probe_target(probes, index)
            names.append(str(index) if target is None else f"{index} (true {target})")
        return f"probe{'s' if len(names) > 1 else ''} {', '.join(names)}"

    def probe_target(self, probes: Probes, index: int) -> str | None:
        """A probe's true class name or float target, as captions and tables give it; None
        without either."""
        if probes.labels is not None:
            return class_name(int(probes.labels[index]), self.class_names)
        if probes.values is not None:
            return f"{float(probes.values[index]):.3g}"
        return None

    def probe_forward(self, pl_module: pl.LightningModule) -> Forward | None:
        """How probe passes run the model (:func:`forward_with` the callback's ``forward_fn``)."""
        return forward_with(pl_module, self.forward_fn)

    def logs_scalars(self) -> bool:
        """Whether a render logs scalars too (trust scores), which go to any logger; a view of
        images and texts alone is not rendered where nothing takes them (a CSVLogger alone),
        but for ``fast_dev_run``, whose point is to run every piece once."""
        return True

    @override
    def logs_anything(self, trainer: pl.Trainer) -> bool:
        """Only where a logger takes its images, or its scalars (:meth:`logs_scalars`), or
        under ``fast_dev_run``, whose point is to run every piece once."""
        return self.logs_scalars() or bool(trainer.fast_dev_run) or self.takes_images(trainer)

    @override
    def log_image(self, trainer: pl.Trainer, tag: str, image: torch.Tensor) -> None:
        """Log ``image`` under a line naming the alerts active in training that say the model
        diverged, where there are any: a user's diverged model drew Grad-CAM maps as convincing
        as a healthy one's, and nothing on them said that training had failed. (An alert on one
        layer, as ``not_learning``, says little of the pictures: a detector's top FPN level,
        slow to start, put one on every picture of a short fit.)"""
        active = RunContext.of(trainer).active_divergence(trainer)
        if active:
            line = (
                f"ALERT {', '.join(active)} in training (the alerts in the TEXT tab): a model "
                "that diverged can still draw convincing pictures."
            )
            banner = footnote(image.shape[-1], line, image.device, image.dtype)
            image = stack_rows(banner, image)
        super().log_image(trainer, tag, image)

    @override
    def renders_at_start(self) -> bool:
        """At fit start, unless restored from a checkpoint (the probes come back with it)."""
        return self.at_fit_start and self.showing and self.probes is None

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One probe pass on global rank 0 (no collective inside), as an alert if it fails."""
        if not trainer.is_global_zero or not self.logs_anything(trainer):
            return
        name = type(self).__name__
        started = time.perf_counter()
        failing = (name, "failed") in self.alerts.active
        with (
            progress_note(trainer, f"lightning-viz: {name} rendering"),
            self.guarded(trainer, name),
            probe_pass(pl_module),
        ):
            self.visualize(trainer, pl_module, self.probes)
        if failing and (name, "failed") in self.alerts.active:
            # a failure that lasts costs a render's time at every epoch for nothing (a
            # detector's Grad-CAM, 30 to 44% of each epoch)
            self.show_nothing(
                "it failed at two renders in a row (the failure is in its alert) and stops "
                "trying for this fit",
                trainer,
            )
        seconds = time.perf_counter() - started
        if seconds >= SLOW_RENDER_SECONDS and not self._said_slow:
            self._said_slow = True
            RunContext.of(trainer).say(
                f"lightning-viz: {name} took {seconds:.1f} s to render at step "
                f"{trainer.global_step} (every_n_epochs= or fewer probes or layers for less; "
                "lightning_viz/overhead charts what each callback costs)"
            )

    def prepare(self, pl_module: pl.LightningModule, probes: Probes, output: Any) -> None:
        """Model-dependent choices that need the checked probes and the model's ``output`` on
        the first of them (in eval mode); raise :class:`Unsuited` when the model does not suit
        the callback's defaults. Default: none."""

    def visualize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes) -> None:
        """Compute and log one probe visualization (rank 0, eval mode, failures become alerts)."""
        raise NotImplementedError
