"""The functional core against its peers (captum, pytorch-grad-cam, torch-cam) and the floor.

    python -m benchmarks.peers

Same model, inputs and outputs for every method (the outputs are checked to agree in the same
run). One row per (task, peer). Grad-CAM: 4 layers; the peers are called once per layer; the
floor is one plain forward plus one backward to the input. Projections: top-4 channels of 5
layers; captum's Deconvolution is called once per (layer, channel); the floor is one forward that
stops at the deepest layer plus the plain partial backwards (K channels batched) that no method
can skip. Occlusion: 16x16 patches every 8 pixels (49 positions); captum's ``Occlusion`` at its
default ``perturbations_per_eval=1`` and at its fastest of a few; the floor is one forward of
all occluded images as a single batch, without gradients. CAM: the map of the predicted class
read from ``layer4`` and ``fc``; torch-cam's ``CAM`` with both given, and with both found by its
own search (a forward of zeros, at the input size and at its default 224x224); the floor is one
plain forward without gradients. Only resnet18: vgg11's head is not global average pooling + one
linear layer. SmoothGrad, integrated and expected gradients: captum's defaults (5 noise samples
of stdev 1, 50 steps, 5 baseline draws) for both; the floor is one forward and one backward of
all the points as a single batch.
"""

from __future__ import annotations

import argparse
import logging

import torch
from captum.attr import (
    Deconvolution,
    GradientShap,
    IntegratedGradients,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchcam.methods import CAM

from benchmarks.common import alternate, machine, model_and_inputs, table
from lightning_viz.functional import (
    expected_gradients,
    grad_cam,
    integrated_gradients,
    occlusion,
    project_layers,
    smooth_grad,
    top_channels,
)
from lightning_viz.functional._capture import resolve_layers, run_until_captured
from lightning_viz.functional.cam import class_activation_map
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


def cam_rows(name: str, batch: int, repeats: int) -> list[list[str]]:
    model, x = model_and_inputs(name, batch)
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    class_idx = targets.tolist()
    logging.getLogger("torchcam").setLevel(logging.ERROR)  # "set to 'layer4'" on every call

    def ours():
        return class_activation_map(model, x, targets, layer="layer4", classifier="fc")[0]

    def ours_found():
        return class_activation_map(model, x, targets)[0]

    def torch_cam(layer=None, classifier=None, input_shape=tuple(x.shape[1:])):
        with CAM(model, layer, classifier, input_shape=input_shape) as extractor:
            with torch.no_grad():
                model(x)
            return extractor(class_idx=class_idx, normalized=False)[0]

    def floor():
        with torch.no_grad():
            return model(x)

    worst = max(
        relative_error(ours(), torch_cam("layer4", "fc")), relative_error(ours_found(), torch_cam())
    )
    assert worst < 1e-5, f"CAM disagrees with torch-cam by {worst:.2e}"
    times = alternate(
        {
            "ours": ours,
            "ours found": ours_found,
            "torch-cam": lambda: torch_cam("layer4", "fc"),
            "torch-cam found": torch_cam,
            "torch-cam default": lambda: torch_cam(input_shape=(3, 224, 224)),
            "floor": floor,
        },
        repeats,
    )
    given = rows_for(name, "CAM, layer4 and fc given", times, {"torch-cam CAM": "torch-cam"})
    peers = {
        "torch-cam CAM (its search at the input size)": "torch-cam found",
        "torch-cam CAM (its search at its default 224x224)": "torch-cam default",
    }
    found = {**times, "ours": times["ours found"]}
    return given + rows_for(name, "CAM, layer and fc found", found, peers)


def saliency_rows(name: str, batch: int, repeats: int) -> list[list[str]]:
    """SmoothGrad, integrated and expected gradients at captum's default settings (5 noise
    samples of stdev 1, 50 steps, 5 baseline draws); the floor is one forward and one backward
    of all the points as a single batch."""
    model, x = model_and_inputs(name, batch)
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    references = torch.randn(16, *x.shape[1:], device=x.device)

    def floor(points: int):
        def run():
            inputs = x.repeat_interleave(points, dim=0).requires_grad_(True)
            scores = model(inputs).gather(1, targets.repeat_interleave(points)[:, None])
            return torch.autograd.grad(scores.sum(), inputs)

        return run

    def captum_smooth_grad():
        torch.manual_seed(0)
        return NoiseTunnel(Saliency(model)).attribute(
            x, target=targets, nt_type="smoothgrad", nt_samples=5, stdevs=1.0
        )

    tasks = {
        "smooth_grad, 5 samples": (
            lambda: smooth_grad(model, x, targets, samples=5, stdev=1.0),
            captum_smooth_grad,
            "captum NoiseTunnel(Saliency)",
            5,
        ),
        "integrated_gradients, 50 steps": (
            lambda: integrated_gradients(model, x, targets, steps=50),
            lambda: IntegratedGradients(model).attribute(x, target=targets),
            "captum IntegratedGradients",
            50,
        ),
        "expected_gradients, 5 samples": (
            lambda: expected_gradients(model, x, references, targets, samples=5),
            lambda: GradientShap(model).attribute(x, baselines=references, target=targets),
            "captum GradientShap",
            5,
        ),
    }
    for task in ("smooth_grad, 5 samples", "integrated_gradients, 50 steps"):
        ours, peer = tasks[task][:2]
        worst = relative_error(ours(), peer())
        assert worst < 1e-4, f"{task} disagrees with captum by {worst:.2e}"
    rows = []
    for task, (ours, peer, label, points) in tasks.items():
        times = alternate({"ours": ours, "peer": peer, "floor": floor(points)}, repeats)
        rows += rows_for(name, task, times, {label: "peer"})
    return rows


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
        rows += saliency_rows(name, args.batch, args.repeats)
    rows += cam_rows("resnet18", args.batch, args.repeats)
    print(f"machine: {machine()}; batch {args.batch}, 64x64, median of {args.repeats}")
    print(table(rows, HEADER))


if __name__ == "__main__":
    main()
