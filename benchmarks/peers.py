"""The functional core against its peers (captum, pytorch-grad-cam) and against the floor.

    python -m benchmarks.peers

Same model, inputs and outputs for every method (the outputs are checked to agree in the same
run). One row per (task, peer). Grad-CAM: 4 layers; the peers are called once per layer; the
floor is one plain forward plus one backward to the input. Projections: top-4 channels of 5
layers; captum's Deconvolution is called once per (layer, channel); the floor is one forward that
stops at the deepest layer plus the plain partial backwards (K channels batched) that no method
can skip. Occlusion: 16x16 patches every 8 pixels (49 positions); captum's ``Occlusion`` at its
default ``perturbations_per_eval=1`` and at its fastest of a few; the floor is one forward of
all occluded images as a single batch, without gradients.
"""

from __future__ import annotations

import argparse

import torch
from captum.attr import Deconvolution, LayerGradCam, Occlusion
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from benchmarks.common import alternate, machine, model_and_inputs, table
from lightning_viz.functional import grad_cam, occlusion, project_layers, top_channels
from lightning_viz.functional._capture import resolve_layers, run_until_captured
from lightning_viz.functional.occlusion import occlusion_windows
from lightning_viz.testing import ChannelEnergy

GRADCAM_LAYERS = {
    "vgg11": ["features.8", "features.13", "features.18", "features.20"],
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
}
PROJECTION_LAYERS = {
    "vgg11": ["features.0", "features.3", "features.8", "features.13", "features.18"],
    "resnet18": ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"],
}


HEADER = ["model", "task", "ours (ms)", "peer", "peer / ours", "ours / floor"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def rows_for(
    name: str, task: str, times: dict[str, float], peers: dict[str, str]
) -> list[list[str]]:
    """One row per peer (``{label: key in times}``), ours and the floor repeated on each."""
    ours, floor = times["ours"], times["floor"]
    return [
        [
            name,
            task,
            f"{ours * 1e3:.1f}",
            label,
            f"{times[key] / ours:.2f}x",
            f"{ours / floor:.2f}x",
        ]
        for label, key in peers.items()
    ]


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
    peers = {"captum LayerGradCam": "captum", "pytorch-grad-cam GradCAM": "pytorch-grad-cam"}
    return rows_for(name, "grad_cam, 4 layers", times, peers)


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
    return rows_for(
        name, f"deconvnet, top-{k} x 5 layers", times, {"captum Deconvolution": "captum"}
    )


def occlusion_rows(
    name: str, batch: int, repeats: int, window: int = 16, stride: int = 8
) -> list[list[str]]:
    model, x = model_and_inputs(name, batch)
    channels = x.shape[1]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    masks = occlusion_windows(tuple(x.shape[-2:]), (window, window), (stride, stride), x.device)

    def ours():
        return occlusion(model, x, targets, window, stride, probabilities=False)

    def captum(perturbations_per_eval: int = 1):
        with torch.no_grad():
            return Occlusion(model).attribute(
                x,
                sliding_window_shapes=(channels, window, window),
                strides=(channels, stride, stride),
                baselines=0.0,
                target=targets,
                perturbations_per_eval=perturbations_per_eval,
            )[:, 0]

    def floor():
        with torch.no_grad():
            return model((x[:, None] * (1 - masks[None, :, None])).flatten(0, 1))

    worst = relative_error(ours(), captum())
    assert worst < 1e-3, f"occlusion disagrees with captum by {worst:.2e}"
    variants = {"ours": ours, "captum": captum, "floor": floor}
    for per_eval in (4, 16, len(masks)):
        variants[f"captum {per_eval}"] = lambda per_eval=per_eval: captum(per_eval)
    times = alternate(variants, repeats)
    fastest = min((key for key in times if key.startswith("captum ")), key=times.get)
    task = f"occlusion, {batch} x {len(masks)} patches"
    peers = {
        "captum Occlusion (default)": "captum",
        f"captum Occlusion (perturbations_per_eval={fastest.split()[1]}, its fastest)": fastest,
    }
    return rows_for(name, task, times, peers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    for name in ("vgg11", "resnet18"):
        rows += gradcam_rows(name, args.batch, args.repeats)
        rows += projection_rows(name, args.batch, args.repeats)
        rows += occlusion_rows(name, args.batch, args.repeats)
    print(f"machine: {machine()}; batch {args.batch}, 64x64, median of {args.repeats}")
    print(table(rows, HEADER))


if __name__ == "__main__":
    main()
