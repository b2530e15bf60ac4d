"""What the trust scores add to a probe view's epoch, in optimizer steps.

    python -m benchmarks.trust_scores

Each view runs through a real Trainer with the default probes (one per class: 10), once per
``scores=`` setting: none, ``"stability"`` (the default), ``"sanity"`` (the view's
explanation again with the upper half of the network re-initialized, drawn anew at each render),
``"faithfulness"`` (deletion and insertion curves of the map and of a random order: 4 x 17
forwards of the probes). Each epoch is timed as the training thread sees it (images encoded and
written on the background writer, let finish outside the timing) and given as optimizer steps
at batch 64 on the same model; the columns past the first are what each score adds to the
view's own epoch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import DEVICE, MODELS, alternate, machine, table
from benchmarks.probe_cost import optimizer_step
from lightning_viz import (
    CAMLogger,
    DeconvLogger,
    GradCAMLogger,
    OcclusionLogger,
    SaliencyLogger,
)
from lightning_viz.callbacks.base import RunContext, VizCallback
from lightning_viz.testing import ImageClassifier

VIEWS: dict[str, Callable[..., VizCallback]] = {
    "GradCAM": GradCAMLogger,
    "CAM": CAMLogger,
    "Occlusion": OcclusionLogger,
    "SmoothGrad": lambda **scores: SaliencyLogger(method="smoothgrad", **scores),
    "Deconv": DeconvLogger,
}
"""Each timed view: a row per model."""
SETTINGS = {"none": False, "stability": ["stability"], "sanity": ["sanity"]}
SETTINGS["faithfulness"] = ["faithfulness"]
"""The ``scores=`` of each timed variant (DeconvLogger has sanity only)."""


def measure(name: str, views: list[str], repeats: int) -> list[list[str]]:
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    module = ImageClassifier(factory(), lr=0.01, momentum=0.0)
    data = TensorDataset(torch.randn(64, *shape), torch.randint(0, 10, (64,)))
    variants: dict = {"step": optimizer_step(module, 64, shape)}
    backgrounds = []
    for setting, scores in SETTINGS.items():  # a Trainer per setting: one logger of a type each
        loggers = {
            view: VIEWS[view](scores=scores)
            for view in views
            if view != "Deconv" or setting in ("none", "sanity")
        }
        trainer = pl.Trainer(
            max_steps=1,
            accelerator=DEVICE.type,
            devices=1,
            callbacks=list(loggers.values()),
            logger=pl.loggers.TensorBoardLogger(
                "/tmp/lightning-viz-bench", name=f"scores-{name}-{setting}"
            ),
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        trainer.fit(module, DataLoader(data, batch_size=8))
        background = RunContext.of(trainer).background
        background.reopen()  # as during training: PNG encoding and writes off the timed thread
        backgrounds.append(background)
        variants |= {
            (view, setting): partial(logger._run, trainer, module)
            for view, logger in loggers.items()
            if logger._not_shown is None
        }

    def settle() -> None:
        for background in backgrounds:
            background.flush()

    times = alternate(variants, repeats, settle=settle)
    for background in backgrounds:
        background.close()
    step = times.pop("step")
    rows = []
    for view in views:
        if (view, "none") not in times:
            rows.append([name, view, "-", "-", "-", "-"])
            continue
        base = times[(view, "none")]
        added = [
            f"{(times[(view, s)] - base) / step:+.2f}" if (view, s) in times else "-"
            for s in list(SETTINGS)[1:]
        ]
        rows.append([name, view, f"{base / step:.2f}", *added])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--views", nargs="+", choices=list(VIEWS), default=list(VIEWS))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = [row for name in args.models for row in measure(name, args.views, args.repeats)]
    print(f"machine: {machine()}; default probes (10), median of {args.repeats}")
    header = [
        "model",
        "view",
        "epoch, no scores (steps)",
        *(f"+ {setting} (steps)" for setting in list(SETTINGS)[1:]),
    ]
    print(table(rows, header))


if __name__ == "__main__":
    main()
