# Copyright 2026 The cityseg_ros Authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Zoo network -> ONNX graph: input ``image`` N,3,H,W float32 (normalised), output ``logits``.

torch's dynamo exporter (``torch.onnx.export(dynamo=True)``, onnxscript) is the one that works
for every zoo model: the legacy TorchScript exporter fails on ``adaptive_avg_pool2d`` with sizes
that do not divide (ESPNetv2's pyramid, UPerNet's PPM). InternImage's DCNv3 is exported through
its ``grid_sample`` core (ONNX GridSample, opset >= 16); the default ``gather`` core uses
``embedding_bag``, which becomes an ONNX Loop that runtimes reject. The graph computes
``model(x)``: the main logits at the model's output stride, before any upsampling.

For the runtimes' sake, and without changing the operator: adaptive average pooling becomes
AvgPool, Gather or small MatMuls instead of torch's gather decomposition, thin grouped 3x3
convolutions are regrouped, and the graph gets constant folding but not onnxscript's pattern
rewriter (minutes on InternImage). Tracing happens in float32 outside inference mode, whatever
the caller's autocast and grad mode.
"""

import contextlib
import io
import logging
from pathlib import Path
import shutil
import tempfile
import time
from typing import Callable, Mapping, Optional, Sequence
import warnings

from cityseg_ros.backends import require
from cityseg_ros.errors import ConfigError
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['compare_with_onnxruntime', 'export_onnx', 'exportable', 'INPUT_NAME', 'MIN_OPSET',
           'OPSET', 'OUTPUT_NAME', 'prepare_network']

logger = logging.getLogger(__name__)

INPUT_NAME = 'image'
OUTPUT_NAME = 'logits'
#: Default ONNX opset: 18 is what torch's dynamo exporter targets natively (no conversion).
OPSET = 18
MIN_OPSET = 17
#: The DCNv3 core that exports (ONNX GridSample).
EXPORT_DCN_CORE = 'grid_sample'
#: Largest batch a dynamic-batch graph is traced for (torch.export needs a bound).
MAX_BATCH = 256
#: Above this many bytes of weights, they go to ``F.onnx.data`` beside the graph (protobuf
#: cannot hold 2 GiB; InternImage-XL has 1.5 GB of weights).
EXTERNAL_DATA_BYTES = 1 << 30
#: Bumped when the exported graph changes for the same network (cache keys include it).
EXPORT_VERSION = 5


def prepare_network(name: str, weights: Optional[str]) -> nn.Module:
    """Build a zoo model on the CPU, load ``weights`` (path, 'auto' or None) and fold BatchNorm.

    The same preparation as the engine's, so an exported file and a backend's graph agree.
    """
    from cityseg_ros.checkpoints import load_checkpoint, resolve_weights
    from cityseg_ros.models.zoo import build_model, get_spec

    spec = get_spec(name)
    path = resolve_weights(spec, weights)
    net = build_model(spec.name, spec.weights_for(str(path) if path else None))
    if path is None:
        logger.warning('%s: exporting RANDOM (untrained) weights', spec.name)
    else:
        load_checkpoint(net, path)
    if hasattr(net, 'fuse_bn'):
        net.fuse_bn()
    return net.eval()


#: Grouped 3x3 convolutions with at most this many input (and 4 output) channels per group
#: run on a generic, slow oneDNN kernel (OpenVINO's too); they are exported regrouped.
_THIN_GROUP_IN = 8
_REGROUP_IN = 32


def _regroup_factor(conv: nn.Module) -> int:
    """How many groups of ``conv`` to merge into one (1: leave it as it is)."""
    if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3) or conv.groups < 16:
        return 1
    in_per, out_per = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    if conv.groups == conv.in_channels or in_per > _THIN_GROUP_IN or out_per > 4:
        return 1  # depth-wise and wide groups have fast kernels
    ratio = -(-_REGROUP_IN // in_per)
    while conv.groups % ratio:
        ratio += 1
    return ratio if ratio < conv.groups else 1


def _regrouped(conv: nn.Conv2d, ratio: int) -> nn.Conv2d:
    """Return the same convolution with ``ratio`` times fewer, wider groups (zeros between).

    Group g of the original becomes block g % ratio of the new group g // ratio: it reads the
    same inputs and writes the same outputs, and the zero weights add exact zeros. ESPNetv2's
    16-group 8 -> 3 channel decoder convolution runs about 3x faster this way in OpenVINO.
    """
    groups = conv.groups // ratio
    out_per, in_per = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    wide = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, conv.dilation, groups, conv.bias is not None,
                     conv.padding_mode)
    weight = conv.weight.detach().new_zeros(conv.out_channels, in_per * ratio,
                                            *conv.kernel_size)
    for g in range(conv.groups):
        k = g % ratio
        weight[g * out_per:(g + 1) * out_per, k * in_per:(k + 1) * in_per] = \
            conv.weight.detach()[g * out_per:(g + 1) * out_per]
    wide.weight = nn.Parameter(weight, requires_grad=False)
    if conv.bias is not None:
        wide.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
    return wide.eval()


@contextlib.contextmanager
def exportable(net: nn.Module):
    """Make ``net`` exportable and fast in the runtimes for the duration; then restore it.

    Every DCNv3 switches to the exportable core, and thin grouped 3x3 convolutions are
    regrouped (:func:`_regrouped`, the same operator).
    """
    from cityseg_ros.models.dcnv3 import DCNv3

    saved = [(m, m.core) for m in net.modules() if isinstance(m, DCNv3)]
    swapped = [(parent, name, child) for parent in net.modules()
               for name, child in parent.named_children() if _regroup_factor(child) > 1]
    try:
        for module, _ in saved:
            module.core = EXPORT_DCN_CORE
        for parent, name, child in swapped:
            setattr(parent, name, _regrouped(child, _regroup_factor(child)))
        yield net
    finally:
        for module, core in saved:
            module.core = core
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _weight_bytes(net: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())


def export_onnx(net: nn.Module, out: Path, input_size: Sequence[int], batch: int = 1,
                dynamic_batch: bool = False, opset: int = OPSET,
                metadata: Optional[Mapping[str, str]] = None, optimize: bool = True,
                progress: Optional[Callable[[str], None]] = None) -> Path:
    """Export ``net`` (eval mode, on the CPU) to ``out``; the file appears complete or not at all.

    Args:
        net: a zoo network, ``model(x) -> N,C,H/s,W/s`` logits.
        out: the ``.onnx`` path; weights over 1 GiB go to ``<out>.data`` beside it.
        input_size: (H, W) of the input.
        batch: the fixed batch size (ignored with ``dynamic_batch``).
        dynamic_batch: make the batch dimension symbolic (``batch``, 1..256).
        opset: ONNX opset, >= 17.
        metadata: extra ``metadata_props`` for the graph (model name, normalisation, ...).
        optimize: fold constants and drop what is left unused (:func:`_optimize`).
        progress: gets a line when the export starts.

    Returns:
        ``out``.

    Raises:
        ConfigError: the onnx extra is missing, bad arguments, or the exporter failed.
    """
    require('onnx', 'onnx', 'exporting to ONNX')
    require('onnxscript', 'onnx', "exporting to ONNX (torch's dynamo exporter)")
    if opset < MIN_OPSET:
        raise ConfigError(f'opset {opset} is too old: use {MIN_OPSET} or newer (default {OPSET})')
    if batch < 1:
        raise ConfigError(f'batch {batch} must be >= 1')
    h, w = (int(v) for v in input_size)
    if any(p.device.type != 'cpu' for p in net.parameters()):
        raise ConfigError('export_onnx needs the network on the CPU')
    out = Path(out)
    name = getattr(net, 'zoo_name', type(net).__name__)
    say = progress or logger.info
    # torch.export specialises a dimension whose example size is 1: trace a dynamic batch at 2.
    with torch.inference_mode(False):
        example = torch.zeros((2 if dynamic_batch else batch, 3, h, w))
    dynamic_shapes = ({0: torch.export.Dim('batch', min=1, max=MAX_BATCH)},) if dynamic_batch \
        else None
    say(f'exporting {name} {h}x{w} ({"dynamic batch" if dynamic_batch else f"batch {batch}"}) '
        'to ONNX; this takes seconds to minutes')
    start = time.perf_counter()
    chatter = io.StringIO()  # the exporter prints its steps: keep them out of a node's stdout
    try:
        # Traced as in training code, in float32: the engine calls this under inference_mode
        # (where modules may take inference-only shortcuts, oneDNN calls, that cannot be
        # traced) and under its autocast (bf16 would end up in the graph).
        with torch.inference_mode(False), torch.enable_grad(), _no_autocast(), \
                exportable(net), contextlib.redirect_stdout(chatter), _quiet_exporter():
            program = torch.export.export(net, (example,), dynamic_shapes=dynamic_shapes,
                                          strict=False)
            program = program.run_decompositions(_DECOMPOSITIONS)
            program = torch.onnx.export(
                program, (example,), dynamo=True, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], opset_version=opset, optimize=False, verbose=False)
            if optimize:
                _optimize(program.model)
    except Exception as exc:  # noqa: B902 -- the exporter raises many kinds; one line
        logger.debug('exporter output:\n%s', chatter.getvalue(), exc_info=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f'exporting {name} at {h}x{w} to ONNX failed: {first}') from None
    logger.debug('exporter output:\n%s', chatter.getvalue())
    props = {'cityseg_ros.input': f'{INPUT_NAME}: N,3,{h},{w} float32, normalised',
             'cityseg_ros.output': f'{OUTPUT_NAME}: model(x), N,C,H/s,W/s raw logits'}
    props.update(metadata or {})
    program.model.metadata_props.update({k: str(v) for k, v in props.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    external = _weight_bytes(net) > EXTERNAL_DATA_BYTES
    # Saved into a temporary directory beside ``out`` under the final name (the graph refers
    # to its .data file by name), then moved into place: no half-written file at ``out``.
    tmp = Path(tempfile.mkdtemp(prefix='.export-', dir=out.parent))
    try:
        program.save(tmp / out.name, external_data=external)
        data = tmp / (out.name + '.data')
        if data.exists():
            shutil.move(str(data), str(out.parent / data.name))
        shutil.move(str(tmp / out.name), str(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info('exported %s to %s in %.1f s', name, out, time.perf_counter() - start)
    return out


def _pooling_matrix(size_in: int, size_out: int, like: torch.Tensor) -> torch.Tensor:
    """Return the size_out x size_in matrix of adaptive average pooling along one axis.

    Row i averages input cells ``floor(i * n / m)`` to ``ceil((i + 1) * n / m) - 1``, as ATen's
    adaptive pooling does; built from aranges, so the exported graph folds it to a constant.
    """
    i = torch.arange(size_out, device=like.device)
    start = torch.div(i * size_in, size_out, rounding_mode='floor')
    end = -torch.div(-(i + 1) * size_in, size_out, rounding_mode='floor')
    j = torch.arange(size_in, device=like.device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def _pool_axis(x: torch.Tensor, dim: int, size_out: int) -> torch.Tensor:
    """Adaptive average pooling of one axis (-2 or -1) of an N,C,H,W tensor."""
    size_in = int(x.shape[dim])
    if size_in == size_out:
        return x

    def window(k: int, stride: int) -> tuple:
        return ((k, 1), (stride, 1)) if dim == -2 else ((1, k), (1, stride))
    if size_in % size_out == 0:
        return F.avg_pool2d(x, *window(size_in // size_out, size_in // size_out))
    starts = [(i * size_in) // size_out for i in range(size_out)]
    lengths = {-(-(i + 1) * size_in // size_out) - start for i, start in enumerate(starts)}
    if len(lengths) == 1:  # e.g. 1.5x: every window 2 wide, starting at floor(1.5 i)
        pooled = F.avg_pool2d(x, *window(lengths.pop(), 1))
        index = torch.div(torch.arange(size_out, device=x.device) * size_in, size_out,
                          rounding_mode='floor')
        return torch.index_select(pooled, x.dim() + dim, index)
    matrix = _pooling_matrix(size_in, size_out, x)
    return torch.matmul(matrix, x) if dim == -2 else torch.matmul(x, matrix.transpose(0, 1))


def _adaptive_avg_pool2d(x: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
    """Adaptive average pooling as ONNX runtimes run it well: AvgPool, Gather, small MatMuls.

    torch's own decomposition of uneven sizes becomes gathers over index tensors, a masked
    sum and OpenVINO's reference ReduceMean kernel (a quarter of ESPNetv2's time). Pooling is
    separable: each axis is pooled on its own, by a strided AvgPool when the sizes divide, by
    a stride-1 AvgPool and a Gather of the window starts when all windows have one width (the
    1.5x pyramid level of ESPNetv2), else by a MatMul with the constant pooling matrix.
    """
    h_out, w_out = (int(v) for v in output_size)
    h_in, w_in = int(x.shape[-2]), int(x.shape[-1])
    if h_in % h_out == 0 and w_in % w_out == 0:
        kernel = (h_in // h_out, w_in // w_out)
        return F.avg_pool2d(x, kernel, kernel)
    return _pool_axis(_pool_axis(x, -2, h_out), -1, w_out)


#: Decompositions applied before the exporter's own (``ExportedProgram.run_decompositions``).
_DECOMPOSITIONS = {torch.ops.aten.adaptive_avg_pool2d.default: _adaptive_avg_pool2d,
                   torch.ops.aten._adaptive_avg_pool2d.default: _adaptive_avg_pool2d}


def _optimize(model) -> None:
    """Fold constants and clean up: onnxscript's optimiser without its pattern rewriter.

    The rewriter (``optimize=True`` of the exporter) is quadratic in the graph's size: 4.7 min
    for UperNet + InternImage-L on 2 cores, against 1.2 s for these passes, which already cut
    the graph from 8103 to 2551 nodes (shape arithmetic, CastLike); the runtimes fuse the rest.
    """
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript import optimizer

    optimizer.fold_constants(model)
    ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(), common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass())(model)


@contextlib.contextmanager
def _no_autocast():
    with torch.autocast('cpu', enabled=False):
        if torch.cuda.is_available():
            with torch.autocast('cuda', enabled=False):
                yield
        else:
            yield


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notes: registry warnings, onnx_ir's per-initializer INFO lines."""
    levels = {'torch.onnx._internal.exporter._registration': logging.ERROR,
              'onnx_ir': logging.WARNING, 'onnxscript': logging.WARNING}
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)  # torch's own pytree deprecations
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def compare_with_onnxruntime(net: nn.Module, path: Path, x: torch.Tensor) -> tuple:
    """Run the graph with ONNX Runtime (CPU) and ``net`` on ``x``.

    Returns:
        (max |onnx - torch|, that divided by max(1, max |torch|)): the golden fixtures' measure
        (shared/reference/GOLDEN.md, section 5).
    """
    ort = require('onnxruntime', 'onnx', 'checking an exported graph')
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    with torch.no_grad():
        expected = net(x).float().numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise ConfigError(f'the graph gives logits {got.shape}, torch {expected.shape}')
    diff = float(np.abs(got - expected).max())
    return diff, diff / max(1.0, float(np.abs(expected).max()))
