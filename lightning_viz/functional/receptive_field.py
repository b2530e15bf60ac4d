"""Receptive fields of named layers, traced through one forward pass.

A ``TorchFunctionMode`` active for one forward attaches a geometry to every tensor derived from the
input: the stride of its grid in input pixels (``jump``) and the input rows/columns its pixel
(0, 0) looks at. Convolutions, pools and pads move the geometry exactly; elementwise and
shape-preserving ops take the union of their inputs' geometries, so residual connections stay
exact. Everything else that changes the grid makes the geometry approximate (see
:func:`receptive_fields`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_viz.functional._capture import StopForward, grid_side, resolve_layers

Pair = tuple[int, int]


@dataclass(frozen=True)
class ReceptiveField:
    """Where output pixel (i, j) of a layer looks in the input.

    Rows ``[start[0] + i * jump[0], end[0] + i * jump[0]]`` and columns
    ``[start[1] + j * jump[1], end[1] + j * jump[1]]``, inclusive, in input pixel coordinates; they
    may reach outside the image (through padding). ``exact`` is False when an op on the path has no
    exact geometry and the field is the approximation documented in :func:`receptive_fields`.
    """

    jump: Pair
    """(y, x) stride of the layer's grid in input pixels."""
    start: Pair
    """(top, left) of output pixel (0, 0)."""
    end: Pair
    """(bottom, right) of output pixel (0, 0), inclusive."""
    exact: bool

    @property
    def size(self) -> Pair:
        """(height, width) of the field in input pixels."""
        return (self.end[0] - self.start[0] + 1, self.end[1] - self.start[1] + 1)

    def boxes(self, rows: Tensor, cols: Tensor) -> Tensor:
        """The fields of output pixels ``(rows[n], cols[n])`` as (K, 4) float boxes x1, y1, x2, y2.

        Coordinates are pixel edges: pixel p spans [p, p + 1), so a box covers pixels x1 .. x2 - 1
        and y1 .. y2 - 1. That is the convention of ``torchvision.ops.roi_align(aligned=True)``.
        """
        top = self.start[0] + rows * self.jump[0]
        left = self.start[1] + cols * self.jump[1]
        bottom = self.end[0] + rows * self.jump[0] + 1
        right = self.end[1] + cols * self.jump[1] + 1
        return torch.stack([left, top, right, bottom], dim=1).float()


def receptive_fields(
    model: nn.Module,
    inputs: Tensor,
    layers: Sequence[str | nn.Module],
    forward: Callable[[Tensor], object] | None = None,
) -> dict[str, ReceptiveField]:
    """The receptive field of each layer's output, from one forward of ``inputs[:1]``.

    The pass runs under ``torch.no_grad`` and stops once every layer has run; train flags are left
    as they are (call it in eval mode). A layer's field is that of its module's output at the
    module's first call.

    Exact: ``conv2d`` (stride, padding int/tuple/'same'/'valid', dilation, groups), ``max_pool2d``,
    ``avg_pool2d`` (stride defaults to the kernel; ``ceil_mode`` changes no field), ``pad``
    (constant, reflect, replicate), adaptive pools whose input size is a multiple of the output
    size, and every op whose output keeps its inputs' grid (activations, also in-place, batch norm,
    sums and products of maps, concatenation along channels, dropout, copies): the union of the
    inputs' fields. Normalizations whose statistics pool over the map (GroupNorm, InstanceNorm) are
    counted as elementwise too.

    Approximate (``exact=False``): interpolation, transposed convolution, pixel (un)shuffle,
    fold/unfold, ``grid_sample``, circular padding, other adaptive pools, flattening, token layers,
    and any op that returns a map on a grid other than its inputs'. Their output gets a field the
    size of the whole image, centred on each output pixel's cell, with ``jump`` = image size /
    output size (rounded): for a 1x1 output exactly the whole image. Maps multiplied by a
    broadcast (N, C, 1, 1) gate (squeeze-and-excitation) keep the field of the map, marked
    inexact. A token layer's (N, T, D) output is read on its square patch grid.

    Args:
        model: the network; only used to find ``layers`` and, without ``forward``, to run.
        inputs: a (N, C, H, W) batch; its first image is run.
        layers: names from ``model.named_modules()`` (or the modules themselves).
        forward: how to run the model when not ``model(inputs)``.

    Raises:
        ValueError: ``inputs`` is not a non-empty 4-D batch, or a layer is unknown, did not
            run, or returned something that does not come from the input.
    """
    if inputs.dim() != 4 or inputs.shape[0] == 0:
        raise ValueError(
            f"`inputs` must have shape (N, C, H, W) with N >= 1, got {tuple(inputs.shape)}"
        )
    modules = resolve_layers(model, layers)
    image = inputs[:1]
    mode = _GeometryMode(image)
    found: dict[str, ReceptiveField] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if name in found:
                return
            geometry = mode.geometry_of(output)
            if geometry is None:
                raise ValueError(
                    f"layer {name!r} ({type(module).__name__}) returned "
                    f"{type(output).__name__} that is not computed from the input"
                )
            found[name] = geometry.field()
            if len(found) == len(modules):
                raise StopForward

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        with torch.no_grad(), mode, suppress(StopForward):
            (forward or model)(image)
    finally:
        for handle in handles:
            handle.remove()
        mode.tracked.clear()
    for name, module in modules.items():
        if name not in found:
            raise ValueError(f"layer {name!r} ({type(module).__name__}) did not run in the forward")
    return found


@dataclass(frozen=True)
class _Geometry:
    """The field of a tensor's pixel (0, 0) and the stride of its grid, in input pixels."""

    jump: Pair
    start: Pair
    end: Pair
    exact: bool = True

    def window(self, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> _Geometry:
        """The geometry after a sliding window (convolution or pooling)."""
        return _Geometry(
            jump=_each(lambda a: self.jump[a] * stride[a]),
            start=_each(lambda a: self.start[a] - padding[a] * self.jump[a]),
            end=_each(
                lambda a: self.end[a] + (dilation[a] * (kernel[a] - 1) - padding[a]) * self.jump[a]
            ),
            exact=self.exact,
        )

    def field(self) -> ReceptiveField:
        return ReceptiveField(self.jump, self.start, self.end, self.exact)


def _each(value: Callable[[int], int]) -> Pair:
    return (value(0), value(1))


def _approximate(grid: Pair, image_size: Pair) -> _Geometry:
    """A field the size of the image, centred on each cell of a ``grid`` laid over the image."""
    jump = _each(lambda a: max(1, round(image_size[a] / grid[a])))
    start = _each(lambda a: (jump[a] - image_size[a]) // 2)
    end = _each(lambda a: start[a] + image_size[a] - 1)
    return _Geometry(jump, start, end, exact=False)


def _union(geometries: list[_Geometry], exact: bool) -> _Geometry:
    """The field that contains all ``geometries``' fields (on one grid)."""
    jumps = {g.jump for g in geometries}
    return _Geometry(
        jump=max(jumps),
        start=_each(lambda a: min(g.start[a] for g in geometries)),
        end=_each(lambda a: max(g.end[a] for g in geometries)),
        exact=exact and len(jumps) == 1 and all(g.exact for g in geometries),
    )


def _pair(value: int | Sequence[int]) -> Pair:
    if isinstance(value, int):
        return (value, value)
    values = tuple(value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _bound(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict) -> dict:
    """``args`` and ``kwargs`` of a call as one dict by parameter name, with defaults."""
    bound = dict(defaults)
    bound.update(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


_CONV = {F.conv2d, torch.conv2d}
_MAX_POOLS = {
    F.max_pool2d,
    F.max_pool2d_with_indices,
    torch.max_pool2d,
    torch._C._nn.max_pool2d_with_indices,
}
_AVG_POOLS = {F.avg_pool2d, torch._C._nn.avg_pool2d}
_ADAPTIVE_POOLS = {
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool2d_with_indices,
    torch._C._nn.adaptive_avg_pool2d,
    torch._C._nn.adaptive_max_pool2d,
}
_PADS = {F.pad}
_GRID_CHANGING = {
    F.interpolate,
    F.upsample,
    F.upsample_bilinear,
    F.upsample_nearest,
    F.conv_transpose2d,
    torch.conv_transpose2d,
    F.pixel_shuffle,
    F.pixel_unshuffle,
    torch.pixel_shuffle,
    torch.pixel_unshuffle,
    F.unfold,
    F.fold,
    F.grid_sample,
    torch.roll,
    torch.flip,
    torch.rot90,
    torch.Tensor.roll,
    torch.Tensor.flip,
    torch.Tensor.rot90,
}


class _GeometryMode(TorchFunctionMode):
    """Attach a :class:`_Geometry` to every tensor computed from ``image`` during a forward.

    Tensors are tracked by identity; each tracked tensor is held alive until the pass ends so that
    its id cannot be reused.
    """

    def __init__(self, image: Tensor) -> None:
        super().__init__()
        self.image_size: Pair = (image.shape[-2], image.shape[-1])
        self.tracked: dict[int, tuple[Tensor, _Geometry]] = {
            id(image): (image, _Geometry(jump=(1, 1), start=(0, 0), end=(0, 0)))
        }

    def geometry_of(self, value: object) -> _Geometry | None:
        entry = self.tracked.get(id(value)) if isinstance(value, Tensor) else None
        return None if entry is None else entry[1]

    @staticmethod
    def grid_of(value: object) -> Pair:
        """The (H, W) grid of a map; a token map's patch grid; (1, 1) for anything else."""
        if not isinstance(value, Tensor):
            return (1, 1)
        if value.dim() == 4:
            return (value.shape[-2], value.shape[-1])
        side = grid_side(tuple(value.shape))
        return (1, 1) if side is None else (side, side)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inputs = [
            (tensor, geometry)
            for tensor in _tensors((args, kwargs))
            if (geometry := self.geometry_of(tensor)) is not None
        ]
        if not inputs:
            return result
        for output in _tensors(result):
            geometry = self._output_geometry(func, args, kwargs, inputs, output)
            self.tracked[id(output)] = (output, geometry)
        return result

    def _output_geometry(
        self,
        func,
        args: tuple,
        kwargs: dict,
        inputs: list[tuple[Tensor, _Geometry]],
        output: Tensor,
    ) -> _Geometry:
        source = inputs[0][1]
        if func in _CONV:
            return _conv(source, args, kwargs)
        if func in _MAX_POOLS or func in _AVG_POOLS:
            return _pool(source, args, kwargs, dilated=func in _MAX_POOLS)
        if func in _PADS:
            return _pad(source, args, kwargs)
        if func in _ADAPTIVE_POOLS and output.dim() == 4:
            return _adaptive_pool(source, inputs[0][0], output, self.image_size)
        if func in _GRID_CHANGING or output.dim() != 4:
            return _approximate(self.grid_of(output), self.image_size)
        grid = output.shape[-2:]
        aligned = [g for t, g in inputs if t.dim() == 4 and t.shape[-2:] == grid]
        if not aligned:
            return _approximate(self.grid_of(output), self.image_size)
        return _union(aligned, exact=len(aligned) == len(inputs))


def _tensors(value: object) -> Iterator[Tensor]:
    """Every tensor in a (nested) structure of tuples, lists and dicts."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _conv(source: _Geometry, args: tuple, kwargs: dict) -> _Geometry:
    call = _bound(
        args,
        kwargs,
        ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
        {"stride": 1, "padding": 0, "dilation": 1},
    )
    kernel = _pair(tuple(call["weight"].shape[-2:]))
    dilation = _pair(call["dilation"])
    padding = call["padding"]
    if padding == "valid":
        padding = 0
    elif padding == "same":
        padding = _each(lambda a: dilation[a] * (kernel[a] - 1) // 2)
    return source.window(kernel, _pair(call["stride"]), _pair(padding), dilation)


def _pool(source: _Geometry, args: tuple, kwargs: dict, dilated: bool) -> _Geometry:
    names = ("input", "kernel_size", "stride", "padding")
    call = _bound(args, kwargs, (*names, "dilation") if dilated else names, {"padding": 0})
    kernel = _pair(call["kernel_size"])
    stride = call.get("stride")
    stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    return source.window(kernel, stride, _pair(call["padding"]), _pair(call.get("dilation", 1)))


def _pad(source: _Geometry, args: tuple, kwargs: dict) -> _Geometry:
    call = _bound(args, kwargs, ("input", "pad", "mode", "value"), {"mode": "constant"})
    widths = (*call["pad"], 0, 0, 0, 0)
    before = (widths[2], widths[0])
    return _Geometry(
        jump=source.jump,
        start=_each(lambda a: source.start[a] - before[a] * source.jump[a]),
        end=_each(lambda a: source.end[a] - before[a] * source.jump[a]),
        exact=source.exact and call["mode"] != "circular",
    )


def _adaptive_pool(source: _Geometry, input: Tensor, output: Tensor, image_size: Pair) -> _Geometry:
    """An adaptive pool is a plain pool (kernel = stride = input / output) when sizes divide."""
    size_in, size_out = input.shape[-2:], output.shape[-2:]
    if any(size_in[a] % size_out[a] for a in (0, 1)):
        return _approximate((size_out[0], size_out[1]), image_size)
    kernel = _each(lambda a: size_in[a] // size_out[a])
    return source.window(kernel, kernel, (0, 0), (1, 1))
