"""Feature visualization against torch-lucent: objective reached, time per unit, epoch cost.

    python -m benchmarks.feature_vis

(a) A CNN is trained epoch by epoch (SGD, lr 0.05, momentum 0.9, batch 64); after each epoch
our renders continue from the previous epoch's parameters and Adam state for ``warm_steps``
steps (the first from noise for 256). Three scenarios: the digits CNN's deepest default layer
(where the warm-start rule was chosen), and held out, another layer under another training seed
and the RGB photo CNN on photo crops (colour decorrelated). After the last epoch, lucent's
``render_vis`` with its defaults (512 steps from noise, its standard transforms, Adam lr 0.05,
one unit at a time) renders the same units; both images are scored the same way: the unit's
mean activation on the image without transforms. The table gives our objective as a share of
lucent's.
(b) Time per unit: ours batched over the units against lucent one unit at a time, per step and
per render (ours ``warm_steps``, lucent 512).
(c) Epoch cost: one warm render with FeatureVisualizer's defaults (two layers, 6 units each,
128 warm steps), in optimizer steps at batch 64, on the digits CNN and resnet18 at 64x64.

Lucent is given the same input mapping as ours (display [0, 1] to the model's input space) and
its images are not upsampled to 224 (``fixed_image_size`` = the padded size), so the two
optimize the same objective.
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import DEVICE, MODELS, alternate, machine, table
from benchmarks.probe_cost import optimizer_step
from lightning_viz.callbacks.base import RunContext
from lightning_viz.callbacks.feature_visualizer import FeatureVisualizer
from lightning_viz.functional.feature_vis import PAD, to_model_input, visualize_features
from lightning_viz.testing import DigitsCNN, ImageClassifier, PhotoCNN, digits_loaders, photo_crops

SCENARIOS = {
    "digits CNN features.10 (tuned on)": ("digits", "features.10", 0),
    "digits CNN features.6, another training seed (held out)": ("digits", "features.6", 1),
    "photo CNN features.10, RGB (held out)": ("photos", "features.10", 0),
}
"""(data, layer, training seed) of each run of (a): the warm-start rule was chosen on the first
alone."""


def lucent_render(model, layer: str, unit: int, shape, mean, std, steps: int):
    """Lucent's render_vis with its defaults, our input mapping, no upsampling to 224."""
    from lucent.optvis import param, render, transform

    channels, size = shape[0], shape[1]
    transforms = [*transform.standard_transforms, lambda x: to_model_input(x, mean, std)]
    images = render.render_vis(
        model,
        f"{layer.replace('.', '_')}:{unit}",
        param_f=lambda: param.image(size, channels=channels),
        transforms=transforms,
        thresholds=(steps,),
        preprocess=False,
        progress=False,
        show_image=False,
        fixed_image_size=size + 2 * PAD,
    )
    return torch.as_tensor(images[-1]).permute(0, 3, 1, 2)


def objective_of(model, layer: str, images: torch.Tensor, unit: int, mean, std) -> float:
    with torch.no_grad():
        activation = model.features[: int(layer.split(".")[1]) + 1](
            to_model_input(images.to(DEVICE), mean, std)
        )
    return activation[:, unit].mean().item()


def train_epoch(model, loader, optimizer) -> None:
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        F.cross_entropy(model(x.to(DEVICE)), y.to(DEVICE)).backward()
        optimizer.step()
    model.eval()


def scenario_data(data: str, seed: int):
    """(model, training loader, probe images) of a scenario."""
    torch.manual_seed(seed)
    if data == "digits":
        train, val = digits_loaders(seed=seed)
        return DigitsCNN().to(DEVICE).eval(), train, next(iter(val))[0][:64]
    images, labels = photo_crops(1088, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(
        TensorDataset(images[:1024], labels[:1024]), 64, shuffle=True, generator=generator
    )
    return PhotoCNN().to(DEVICE).eval(), train, images[1024:]


def objective_shares(scenario: str, epochs: int, units: int, warm_steps, lucent_steps: int):
    """Per warm-step count, our objective after ``epochs`` warm-started epochs as a share of
    lucent's from noise (mean over units, and the lowest unit's); lucent's mean; timings."""
    data, layer, seed = SCENARIOS[scenario]
    model, train, probes = scenario_data(data, seed)
    shape = tuple(probes.shape[1:])
    mean, std = probes.mean(dim=(0, 2, 3)), probes.std(dim=(0, 2, 3))
    with torch.no_grad():
        activation = model.features[: int(layer.split(".")[1]) + 1](probes.to(DEVICE))
    chosen = activation.mean(dim=(0, 2, 3)).topk(units).indices.tolist()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    kwargs = {"input_mean": mean, "input_std": std}
    first = visualize_features(model, layer, chosen, shape, 256, **kwargs)
    chains = dict.fromkeys(warm_steps, first)
    for epoch in range(epochs):
        train_epoch(model, train, optimizer)
        for steps, previous in chains.items():
            chains[steps] = visualize_features(
                model, layer, chosen, shape, steps, previous.spectrum, previous.adam,
                seed=epoch + 1, **kwargs,
            )  # fmt: skip
    started = time.perf_counter()
    lucent = torch.tensor(
        [
            objective_of(
                model, layer, lucent_render(model, layer, u, shape, mean, std, lucent_steps),
                u, mean, std,
            )
            for u in chosen
        ]
    )  # fmt: skip
    lucent_seconds = (time.perf_counter() - started) / units
    started = time.perf_counter()
    visualize_features(model, layer, chosen, shape, 64, **kwargs)
    ours_step = (time.perf_counter() - started) / units / 64
    shares = {}
    for steps, result in chains.items():
        ratios = result.objective.cpu() / lucent.clamp(min=1e-6)
        shares[steps] = (ratios.mean().item(), ratios.min().item())
    return shares, lucent.mean().item(), lucent_seconds / lucent_steps, ours_step


def epoch_cost(name: str, repeats: int) -> list[str]:
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    module = ImageClassifier(factory(), lr=0.01, momentum=0.0)
    data = TensorDataset(torch.randn(64, *shape), torch.randint(0, 10, (64,)))
    visualizer = FeatureVisualizer()
    trainer = pl.Trainer(
        max_steps=1,
        accelerator=DEVICE.type,
        devices=1,
        callbacks=[visualizer],
        logger=pl.loggers.TensorBoardLogger("/tmp/lightning-viz-bench", name=f"fv-{name}"),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    started = time.perf_counter()
    trainer.fit(module, DataLoader(data, batch_size=8))
    first_seconds = time.perf_counter() - started
    background = RunContext.of(trainer).background
    background.reopen()
    times = alternate(
        {
            "step": optimizer_step(module, 64, shape),
            "warm": lambda: visualizer._run(trainer, module),
        },
        repeats,
        warmup=1,
        settle=background.flush,
    )
    background.close()
    return [
        name,
        ", ".join(visualizer._layers),
        f"{times['step'] * 1e3:.0f}",
        f"{times['warm']:.2f}",
        f"{times['warm'] / times['step']:.1f}",
        f"{first_seconds:.1f}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--warm-steps", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--lucent-steps", type=int, default=512)
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "resnet18"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    timings = None
    print(
        f"\n(a) after {args.epochs} epochs, {args.units} units: our warm-started objective as a "
        f"share of lucent's ({args.lucent_steps} steps from noise), mean over the units "
        "(lowest unit)\n"
    )
    rows = []
    for scenario in SCENARIOS:
        shares, lucent, lucent_step, ours_step = objective_shares(
            scenario, args.epochs, args.units, args.warm_steps, args.lucent_steps
        )
        timings = timings or (lucent_step, ours_step)
        rows.append(
            [scenario, f"{lucent:.3g}"]
            + [f"{mean:.0%} ({low:.0%})" for mean, low in shares.values()]
        )
    header = ["scenario", "lucent's objective"]
    header += [f"ours, {steps} warm steps per epoch" for steps in args.warm_steps]
    print(table(rows, header))
    lucent_step, ours_step = timings
    print(f"\n(b) time per unit, {args.units} units batched (ours) vs one by one (lucent)\n")
    rows = [
        [
            "per step (ms)",
            f"{ours_step * 1e3:.2f}",
            f"{lucent_step * 1e3:.2f}",
            f"{ours_step / lucent_step:.2f}",
        ],
    ]
    rows += [
        [
            f"per render, ours {s} warm steps vs lucent {args.lucent_steps} (s)",
            f"{ours_step * s:.2f}",
            f"{lucent_step * args.lucent_steps:.2f}",
            f"{ours_step * s / (lucent_step * args.lucent_steps):.2f}",
        ]
        for s in args.warm_steps
    ]
    print(table(rows, ["", "ours", "lucent", "ours / lucent"]))
    print("\n(c) epoch cost of a warm render, FeatureVisualizer's defaults (2 layers x 6 units)\n")
    rows = [epoch_cost(name, args.repeats) for name in args.models]
    header = [
        "model",
        "layers",
        "step at batch 64 (ms)",
        "warm render (s)",
        "warm render (steps)",
        "fit with the first render, 256 steps (s)",
    ]
    print(table(rows, header))


if __name__ == "__main__":
    main()
