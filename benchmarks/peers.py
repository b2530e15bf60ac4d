"""Grad-CAM and deconvnet projections against captum and pytorch-grad-cam, and against the floor.

    python -m benchmarks.peers

Same model, inputs and outputs for every method (the outputs are checked to agree to 1e-5 in the
same run). Grad-CAM: 4 layers; the peers are called once per layer; the floor is one plain
forward plus one backward to the input. Projections: top-4 channels of 5 layers; captum's
Deconvolution is called once per (layer, channel); the floor is one forward that stops at the
deepest layer plus the plain partial backwards (K channels batched) that no method can skip.
"""

from __future__ import annotations

import argparse

import torch
from captum.attr import Deconvolution, LayerGradCam
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from benchmarks.common import alternate, machine, model_and_inputs, table
from lightning_viz.functional import grad_cam, project_layers, top_channels
from lightning_viz.functional._capture import resolve_layers, run_until_captured
from lightning_viz.testing import ChannelEnergy

GRADCAM_LAYERS = {
    "vgg11": ["features.8", "features.13", "features.18", "features.20"],
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
}
PROJECTION_LAYERS = {
    "vgg11": ["features.0", "features.3", "features.8", "features.13", "features.18"],
    "resnet18": ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"],
}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def gradcam_rows(name: str, batch: int, repeats: int) -> list[list[str]]:
    model, x = model_and_inputs(name, batch)
    layers = GRADCAM_LAYERS[name]
    modules = resolve_layers(model, layers)
    targets = model(x).argmax(dim=1)

    def ours():
        return grad_cam(model, x, layers, targets)

    def captum():
        return {
            n: LayerGradCam(model, modules[n]).attribute(x, target=targets, relu_attributions=True)[
                :, 0
            ]
            for n in layers
        }

    def pytorch_grad_cam():
        out = {}
        for n in layers:
            with GradCAM(model=model, target_layers=[modules[n]]) as cam:
                out[n] = cam(x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return out

    def floor():
        inputs = x.clone().requires_grad_(True)
        logits = model(inputs)
        return torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), inputs)

    expected, reference = ours(), captum()
    worst = max(relative_error(expected[n], reference[n]) for n in layers)
    assert worst < 1e-5, f"grad_cam disagrees with captum by {worst:.2e}"
    times = alternate(
        {"ours": ours, "captum": captum, "pytorch-grad-cam": pytorch_grad_cam, "floor": floor},
        repeats,
    )
    return [
        [
            name,
            "grad_cam, 4 layers",
            f"{times['ours'] * 1e3:.1f}",
            f"{times['captum'] / times['ours']:.2f}x",
            f"{times['pytorch-grad-cam'] / times['ours']:.2f}x",
            f"{times['ours'] / times['floor']:.2f}x",
        ],
    ]


def projection_rows(name: str, batch: int, repeats: int, k: int = 4) -> list[list[str]]:
    model, x = model_and_inputs(name, batch)
    layers = PROJECTION_LAYERS[name]
    modules = resolve_layers(model, layers)
    with torch.no_grad():
        _, activations = run_until_captured(model, x, modules, full_forward=False)
    channels = {n: top_channels(activations[n], k) for n in layers}

    def ours():
        return project_layers(model, x, channels, rule="deconvnet")

    def captum():
        return {
            n: torch.stack(
                [
                    Deconvolution(ChannelEnergy(model, n, channels[n][:, j])).attribute(x)
                    for j in range(k)
                ],
                dim=1,
            )
            for n in layers
        }

    def floor():
        inputs = x.clone().requires_grad_(True)
        _, acts = run_until_captured(model, inputs, modules, full_forward=False)
        from lightning_viz.functional.projection import backward_seeds

        for i, n in enumerate(layers):
            seeds = backward_seeds(acts[n].detach(), channels[n], "map", n)
            torch.autograd.grad(
                acts[n],
                inputs,
                grad_outputs=seeds,
                is_grads_batched=True,
                retain_graph=i < len(layers) - 1,
            )

    expected, reference = ours(), captum()
    worst = max(relative_error(expected[n].images, reference[n]) for n in layers)
    assert worst < 1e-5, f"projections disagree with captum by {worst:.2e}"
    times = alternate({"ours": ours, "captum": captum, "floor": floor}, repeats)
    return [
        [
            name,
            f"deconvnet, top-{k} x 5 layers",
            f"{times['ours'] * 1e3:.1f}",
            f"{times['captum'] / times['ours']:.2f}x",
            "-",
            f"{times['ours'] / times['floor']:.2f}x",
        ],
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    for name in ("vgg11", "resnet18"):
        rows += gradcam_rows(name, args.batch, args.repeats)
        rows += projection_rows(name, args.batch, args.repeats)
    print(f"machine: {machine()}; batch {args.batch}, 64x64, median of {args.repeats}")
    print(
        table(
            rows,
            [
                "model",
                "task",
                "ours (ms)",
                "captum / ours",
                "pytorch-grad-cam / ours",
                "ours / floor",
            ],
        )
    )


if __name__ == "__main__":
    main()
