"""Cost of one epoch of each probe view, in optimizer steps, and the probe passes' memory.

    python -m benchmarks.probe_cost

Each logger's epoch with its defaults and the default probes (one per class: 10) is timed
through a real Trainer as the training thread sees it (PNG encoding and TensorBoard writes on the
background writer, which is let finish outside the timing) and divided by the time of one
optimizer step at batch 64 on the same model. DeconvLogger: 5 layers x top-3, evolution on;
OcclusionLogger: 7x7 patch positions, 490 occluded images; SaliencyLogger: 16 samples or steps
per probe (160 forwards and backwards); LIMELogger: 256 variants per probe (2,560 forwards).
A view that does not suit the model (CAM without a GAP + linear head) shows "-". Memory: the
extra peak of a probe pass over what was allocated before it, against the size of all module
outputs of one forward of the probe batch (torch.cuda.max_memory_allocated on a GPU; on the CPU
what autograd saves for the pass's backward).
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import DEVICE, MODELS, alternate, machine, table
from lightning_viz import (
    ActivationGridLogger,
    CAMLogger,
    DeconvLogger,
    GradCAMLogger,
    LIMELogger,
    OcclusionLogger,
    SaliencyLogger,
)
from lightning_viz.callbacks.base import RunContext
from lightning_viz.functional._capture import output_shapes
from lightning_viz.testing import ImageClassifier


def optimizer_step(module: ImageClassifier, batch: int, shape: tuple[int, ...]):
    x = torch.randn(batch, *shape, device=DEVICE)
    y = torch.randint(0, 10, (batch,), device=DEVICE)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad()
        F.cross_entropy(module(x), y).backward()
        optimizer.step()

    return step


def saved_bytes(run) -> int:
    """Bytes autograd saves for backward during ``run`` (parameters excluded): on the CPU, where
    the allocator keeps freed memory and RSS cannot isolate one pass, the graph's memory."""
    parameters: set[int] = set()
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def measure(module: torch.nn.Module) -> int:
        parameters.update(p.untyped_storage().data_ptr() for p in module.parameters())
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            run()
        return sum(storages.values())

    return measure


def extra_peak(module: torch.nn.Module, run) -> int:
    """Peak memory a probe pass adds: allocator peak on a GPU, autograd's saved bytes on a CPU."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return saved_bytes(run)(module)


VIEWS = {
    "GradCAM": GradCAMLogger,
    "Deconv": DeconvLogger,
    "Occlusion": OcclusionLogger,
    "SmoothGrad": lambda: SaliencyLogger(method="smoothgrad"),
    "IntegratedGradients": lambda: SaliencyLogger(method="integrated_gradients"),
    "ExpectedGradients": lambda: SaliencyLogger(method="expected_gradients"),
    "LIME": LIMELogger,
    "ActivationGrid": ActivationGridLogger,
    "CAM": CAMLogger,
}
"""Each timed view: a column of the table."""


def measure(name: str, repeats: int) -> list[str]:
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    module = ImageClassifier(factory(), lr=0.01, momentum=0.0)
    data = TensorDataset(torch.randn(64, *shape), torch.randint(0, 10, (64,)))
    loggers = {view: make() for view, make in VIEWS.items()}
    trainer = pl.Trainer(
        max_steps=1,
        accelerator=DEVICE.type,
        devices=1,
        callbacks=list(loggers.values()),
        logger=pl.loggers.TensorBoardLogger("/tmp/lightning-viz-bench", name=f"probe-{name}"),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    shown = {view: logger for view, logger in loggers.items() if logger._not_shown is None}
    background = RunContext.of(trainer).background
    background.reopen()  # as during training: PNG encoding and writes off the timed thread

    def epoch_of(logger):
        return lambda: logger._run(trainer, module)

    variants = {"step": optimizer_step(module, 64, shape)}
    variants |= {view: epoch_of(logger) for view, logger in shown.items()}
    times = alternate(variants, repeats, settle=background.flush)
    background.close()
    gradcam, deconv = loggers["GradCAM"], loggers["Deconv"]
    shapes = output_shapes(module.eval(), gradcam.probes.images)
    activations = sum(torch.Size(shape).numel() * 4 for _, _, shape in shapes)
    gradcam_memory = extra_peak(module, epoch_of(gradcam))
    deconv_memory = extra_peak(module, epoch_of(deconv))
    steps = [f"{times[view] / times['step']:.2f}" if view in times else "-" for view in VIEWS]
    return [
        name,
        f"{times['step'] * 1e3:.1f}",
        *steps,
        f"{activations / 2**20:.1f}",
        f"{gradcam_memory / activations:.2f}x",
        f"{deconv_memory / activations:.2f}x",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = [measure(name, args.repeats) for name in args.models]
    print(f"machine: {machine()}; default probes (10), median of {args.repeats}")
    header = [
        "model",
        "step at batch 64 (ms)",
        *(f"{view} epoch (steps)" for view in VIEWS),
        "probe activations (MiB)",
        "GradCAM extra peak",
        "Deconv extra peak",
    ]
    print(table(rows, header))


if __name__ == "__main__":
    main()
