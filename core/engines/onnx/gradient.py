"""The loss and its gradient as one ONNX graph: the torch-free engine's backward pass (issue 18).

`build_gradient_graph` writes, from an artifact's own weights and metadata, a graph that runs the
forward pass (preprocessing, conv+ReLU, 2x2 pools), the loss of objective.py's formula
(objective.LossSpec: alpha*content + beta*sum_l w_l sum_t w_tl MSE(G_tl, A_tl) + gamma*TV, Gram
and MSE normalisations as in losses.py) and its backward pass by hand:

- convolution: ConvTranspose with the forward kernel (or Conv with the transposed, flipped kernel:
  CONV_BACKWARD, measured below);
- ReLU: the gradient times sign(output) (the mask of positive outputs);
- 2x2 average pool: a quarter to each input; 2x2 max pool: MaxPool's indices + MaxUnpool; an odd
  size's last row/column, which the forward drops, gets zero;
- guided Gram G_t = F diag(m_t) F^T / (C sum m_t): dF = 2 s_t m_t (D_t F), D_t = dL/dG_t;
- content MSE, TV, preprocessing (y = (x[order] * scale - mean) / std).

Inputs: `image` [1,3,H,W]; `content_target` (features at the content layer); per style layer
`gram.<layer>` [T,C,C] (one row per style term: the blended Grams, or one per guided style) and
`mask.<layer>` [T,1,h,w] (the term's guide at the layer's size, ones without guides);
`loss_weights` [3] (alpha, beta, gamma); `layer_weights` [5]; `term_weights` [T,5] (term weight
per layer, 0 where its region is empty there). Outputs: `total`, `content`, `style`, `tv`,
`style_layers` [5] (per layer, term-weighted, before layer weights), `gradient` [1,3,H,W].
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
from collections.abc import Collection
from pathlib import Path

import numpy as np

from ...network import artifact_meta
from ...network.vgg import STYLE_LAYERS, architecture, read_artifact

GRAPH_KIND = "stylefu-vgg-gradient"
GRAPH_VERSION = "1"  # bump when the graph's inputs, outputs or formula change
SOURCE_KEY = "stylefu.gradient_source"  # the artifact's sha256 + content layer it was built for
IR_VERSION = 8  # ONNX Runtime 1.2x refuses IR 14, the default of onnx 1.20+
OPSET = 17
# "conv" (Conv with the transposed, flipped kernel, a second copy of the weights) or
# "convtranspose": Conv measured 1.1-1.2x faster per evaluation (tests/bench_onnx_engine.py).
CONV_BACKWARD = os.environ.get("STYLEFU_CONV_BACKWARD", "conv")


class _Graph:
    """Nodes and initializers with generated names."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.init, self.count = [], [], 0

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        name = name or f"c{len(self.init)}"
        self.init.append(self.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, kind: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs):
        self.count += 1
        base = name or f"{kind.lower()}{self.count}"
        outs = [base] if outputs == 1 else [f"{base}.{k}" for k in range(outputs)]
        self.nodes.append(self.helper.make_node(kind, list(inputs), outs, **attrs))
        return outs[0] if outputs == 1 else outs


def build_gradient_graph(artifact: str | Path, content_layer: str, sha256: str | None = None):
    """The gradient graph (an onnx.ModelProto) for the artifact at `artifact` (whose bytes hash to
    `sha256`, when known)."""
    import onnx
    from onnx import TensorProto, helper

    info, weights = read_artifact(artifact)
    arch = architecture(info.architecture)
    g = _Graph()
    i64 = np.int64
    pre = info.preprocessing
    order = np.array(pre["channel_order"], i64)
    scale = np.float32(pre["scale"])
    mean = np.array(pre["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.array(pre["std"], np.float32).reshape(1, 3, 1, 1)

    # Forward: keep every pool's input and every ReLU's output for the backward pass.
    x = g.op("Gather", "image", g.const(order, dtype=i64), axis=1)
    x = g.op("Div", g.op("Sub", g.op("Mul", x, g.const(scale)), g.const(mean)), g.const(std))
    wanted = set(STYLE_LAYERS) | {content_layer}
    last = arch.deepest_index(wanted)
    steps, relus = [], {}  # steps: ("conv", name, input, output) / ("pool", input, output, indices)
    for i, (name, _, _) in enumerate(arch.convs[: last + 1]):
        w = g.const(weights[f"{name}.weight"], f"{name}.weight")
        b = g.const(weights[f"{name}.bias"], f"{name}.bias")
        y = g.op("Relu", g.op("Conv", x, w, b, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                 name=arch.relu_names[i])
        steps.append(("conv", name, x, y))
        relus[arch.relu_names[i]] = y
        x = y
        if name in arch.block_ends and i < last:
            if info.pooling == "avg":
                out = g.op("AveragePool", x, kernel_shape=[2, 2], strides=[2, 2])
                steps.append(("pool", x, out, None))
            else:
                out, idx = g.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2], outputs=2)
                steps.append(("pool", x, out, idx))
            x = out

    loss_w = "loss_weights"
    alpha, beta, gamma = (g.op("Gather", loss_w, g.const(k, dtype=i64), axis=0) for k in range(3))
    zero_axes = g.const([0], dtype=i64)
    two = g.const(2.0)

    # Content: mean((F - P)^2); dF = 2 alpha (F - P) / numel.
    diff = g.op("Sub", relus[content_layer], "content_target")
    content = g.op("ReduceMean", g.op("Mul", diff, diff), keepdims=0)
    numel = g.op("Cast", g.op("Size", diff), to=TensorProto.FLOAT)
    grads = {content_layer: g.op("Mul", diff, g.op("Div", g.op("Mul", two, alpha), numel))}

    # Style: per layer and term, guided Gram MSE.
    per_layer = []
    for k, layer in enumerate(STYLE_LAYERS):
        f = relus[layer]
        shape = g.op("Shape", f)
        channels = g.op("Cast", g.op("Slice", shape, g.const([1], dtype=i64), g.const([2], dtype=i64)),
                        to=TensorProto.FLOAT)
        flat = g.op("Reshape", f, g.const([1, 0, -1], dtype=i64))  # [1,C,P]
        mask = g.op("Reshape", f"mask.{layer}", g.const([0, 1, -1], dtype=i64))  # [T,1,P]
        mass = g.op("Max", g.op("ReduceSum", mask, g.const([1, 2], dtype=i64), keepdims=1),
                    g.const(1e-8))  # [T,1,1]
        s = g.op("Reciprocal", g.op("Mul", channels, mass))  # [T,1,1]
        weighted = g.op("Mul", flat, mask)  # [T,C,P]
        gram = g.op("Mul", g.op("MatMul", weighted, g.op("Transpose", flat, perm=[0, 2, 1])), s)
        err = g.op("Sub", gram, f"gram.{layer}")
        term_losses = g.op("ReduceMean", g.op("Mul", err, err), axes=[1, 2], keepdims=0)
        tw = g.op("Gather", "term_weights", g.const(k, dtype=i64), axis=1)  # [T]
        per_layer.append(g.op("ReduceSum", g.op("Mul", term_losses, tw), zero_axes, keepdims=1))
        # dL/dG_t = beta w_l w_t 2 (G - A) / C^2; dF = sum_t s_t m_t ((D_t + D_t^T) F).
        lw = g.op("Gather", "layer_weights", g.const(k, dtype=i64), axis=0)
        coef = g.op("Div", g.op("Mul", g.op("Mul", beta, lw), two),
                    g.op("Mul", channels, channels))
        coef = g.op("Mul", g.op("Reshape", tw, g.const([-1, 1, 1], dtype=i64)), coef)  # [T,1,1]
        sym = g.op("Add", err, g.op("Transpose", err, perm=[0, 2, 1]))  # targets may be asymmetric
        back = g.op("MatMul", g.op("Mul", sym, g.op("Mul", coef, s)), flat)  # [T,C,P]
        back = g.op("ReduceSum", g.op("Mul", back, mask), zero_axes, keepdims=1)
        grad = g.op("Reshape", back, shape)
        grads[layer] = g.op("Add", grads[layer], grad) if layer in grads else grad
    style_layers = g.op("Concat", *per_layer, axis=0, name="style_layers")
    style = g.op("ReduceSum", g.op("Mul", style_layers, "layer_weights"), keepdims=0, name="style")

    # Backward through the network, deepest step first.
    current = None
    for step in reversed(steps):
        if step[0] == "conv":
            _, name, x_in, y = step
            relu = next(r for r, v in relus.items() if v == y)
            if relu in grads:
                current = grads[relu] if current is None else g.op("Add", current, grads[relu])
            current = g.op("Mul", current, g.op("Sign", y))  # ReLU: positive outputs only
            current = _conv_backward(g, current, weights[f"{name}.weight"], f"{name}.weight")
        else:
            _, x_in, _, idx = step
            current = _pool_backward(g, current, x_in, idx, info.pooling)
    # Preprocessing: d image[order] = d y * scale / std.
    current = g.op("Mul", current, g.const(scale / std))
    inverse = np.argsort(order).astype(i64)
    pixel_grad = g.op("Gather", current, g.const(inverse, dtype=i64), axis=1)

    # TV: mean(dy^2) + mean(dx^2) of the image; its gradient added to the pixels'.
    tv, tv_grad = _tv(g, "image", i64)
    gradient = g.op("Add", pixel_grad, g.op("Mul", tv_grad, gamma), name="gradient")
    total = g.op("Add", g.op("Add", g.op("Mul", alpha, content), g.op("Mul", beta, style)),
                 g.op("Mul", gamma, tv), name="total")
    content = g.op("Identity", content, name="content")
    tv = g.op("Identity", tv, name="tv")

    f32 = TensorProto.FLOAT
    channels = {relu: cout for relu, (_, _, cout) in zip(arch.relu_names, arch.convs)}
    inputs = [helper.make_tensor_value_info("image", f32, [1, 3, "H", "W"]),
              helper.make_tensor_value_info("content_target", f32, [1, channels[content_layer],
                                                                     None, None])]
    for layer in STYLE_LAYERS:
        c = channels[layer]
        inputs.append(helper.make_tensor_value_info(f"gram.{layer}", f32, ["T", c, c]))
        inputs.append(helper.make_tensor_value_info(f"mask.{layer}", f32, ["T", 1, None, None]))
    inputs += [helper.make_tensor_value_info("loss_weights", f32, [3]),
               helper.make_tensor_value_info("layer_weights", f32, [len(STYLE_LAYERS)]),
               helper.make_tensor_value_info("term_weights", f32, ["T", len(STYLE_LAYERS)])]
    outputs = [helper.make_tensor_value_info(n, f32, []) for n in (total, content, style, tv)]
    outputs += [helper.make_tensor_value_info(style_layers, f32, [len(STYLE_LAYERS)]),
                helper.make_tensor_value_info(gradient, f32, [1, 3, "H", "W"])]
    graph = helper.make_graph(g.nodes, f"stylefu_{arch.name}_gradient", inputs, outputs, g.init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="stylefu")
    model.ir_version = IR_VERSION
    meta = artifact_meta.encode(info) | {artifact_meta.KIND: GRAPH_KIND,
                                         SOURCE_KEY: source_key(artifact, content_layer, sha256)}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def _conv_backward(g: _Graph, grad: str, kernel: np.ndarray, name: str) -> str:
    """d input of a 3x3, pad 1, stride 1 convolution from d output."""
    if CONV_BACKWARD == "conv":
        flipped = np.ascontiguousarray(kernel[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        return g.op("Conv", grad, g.const(flipped, f"{name}.flipped"), kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1])
    return g.op("ConvTranspose", grad, name, kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def _pool_backward(g: _Graph, grad: str, x_in: str, indices: str | None, pooling: str) -> str:
    """d input of a 2x2 stride-2 pool; an odd last row/column (dropped by the pool) gets 0."""
    i64 = np.int64
    if pooling == "max":
        return g.op("MaxUnpool", grad, indices, g.op("Shape", x_in), kernel_shape=[2, 2],
                    strides=[2, 2])
    # Each output's gradient, a quarter to each of its 2x2 inputs: [N,C,h,1,w,1] -> [N,C,2h,2w].
    six = g.op("Unsqueeze", grad, g.const([3, 5], dtype=i64))
    shape = g.op("Shape", six)
    twos = g.op("Mul", shape, g.const([1, 1, 1, 2, 1, 2], dtype=i64))
    spread = g.op("Expand", g.op("Mul", six, g.const(0.25)), twos)
    in_shape = g.op("Shape", x_in)
    doubled = g.op("Mul", g.op("Shape", grad), g.const([1, 1, 2, 2], dtype=i64))
    flat = g.op("Reshape", spread, doubled)
    extra = g.op("Sub", in_shape, doubled)  # [0,0,H%2,W%2]
    pads = g.op("Concat", g.const([0, 0, 0, 0], dtype=i64), extra, axis=0)
    return g.op("Pad", flat, pads)


def _tv(g: _Graph, image: str, i64) -> tuple[str, str]:
    """mean((x[h+1]-x[h])^2) + mean((x[w+1]-x[w])^2) and its gradient w.r.t. the image."""
    from onnx import TensorProto

    loss, grad = None, None
    for axis in (2, 3):
        ax = g.const([axis], dtype=i64)
        later = g.op("Slice", image, g.const([1], dtype=i64), g.const([1 << 62], dtype=i64), ax)
        earlier = g.op("Slice", image, g.const([0], dtype=i64), g.const([-1], dtype=i64), ax)
        d = g.op("Sub", later, earlier)
        part = g.op("ReduceMean", g.op("Mul", d, d), keepdims=0)
        count = g.op("Cast", g.op("Size", d), to=TensorProto.FLOAT)
        gd = g.op("Div", g.op("Mul", d, g.const(2.0)), count)
        before = [0, 0, 1, 0] if axis == 2 else [0, 0, 0, 1]
        after = [0, 0, 1, 0] if axis == 2 else [0, 0, 0, 1]
        pad_low = g.op("Pad", gd, g.const([0] * 4 + after, dtype=i64))  # -gd at x[h]
        pad_high = g.op("Pad", gd, g.const(before + [0] * 4, dtype=i64))  # +gd at x[h+1]
        part_grad = g.op("Sub", pad_high, pad_low)
        loss = part if loss is None else g.op("Add", loss, part)
        grad = part_grad if grad is None else g.op("Add", grad, part_grad)
    return loss, grad


def source_key(artifact: str | Path, content_layer: str, sha256: str | None = None) -> str:
    """What a gradient graph was built from: the artifact's sha256 (`sha256`, else its file's),
    the content layer and this module's graph version (a graph with another key is rebuilt)."""
    from ...io.cache import model_hash

    return f"{sha256 or model_hash(artifact)}|{content_layer}|{GRAPH_VERSION}|{CONV_BACKWARD}"


def _name(artifact: str | Path, content_layer: str, contents: str | Path | None = None,
          sha256: str | None = None) -> str:
    """A graph's file name: what it was built from is in its digest, so finding the right one
    parses nothing (parsing 60-100 MB of protobuf costs start-up time). `contents`: a file with
    the artifact's bytes under another name (export's temporary file), hashed in its place;
    `sha256`: those bytes' hash, known already."""
    digest = hashlib.sha1(source_key(contents or artifact, content_layer, sha256).encode())
    return f"{Path(artifact).stem}.gradient-{content_layer}-{digest.hexdigest()[:16]}.onnx"


def sibling_path(artifact: str | Path, content_layer: str,
                 contents: str | Path | None = None, sha256: str | None = None) -> Path:
    """The gradient graph `stylefu export` writes beside the artifact (default content layer)."""
    return Path(artifact).with_name(_name(artifact, content_layer, contents, sha256))


def cached_path(artifact: str | Path, content_layer: str, sha256: str | None = None) -> Path:
    from ...io.paths import cache_dir

    return cache_dir() / "gradient" / _name(artifact, content_layer, sha256=sha256)


def gradient_graph(artifact: str | Path, content_layer: str, sha256: str,
                   source=None, damaged: Collection[Path] = ()) -> Path | bytes:
    """The gradient graph for the artifact at `artifact` whose bytes hash to `sha256` (those the
    engine loaded): the file export wrote beside it, else the cache's, built on first use (a few
    seconds); where the cache cannot be written, the graph itself (bytes, for ONNX Runtime): a
    cache only costs speed. Both are found by `sha256`, and built from `source` (the loaded file,
    still open), so an export renamed onto `artifact` since the load never pairs the loaded model
    with the new one's graph. Without `source` (or where an open file has no path), a graph is
    built from `artifact` only while it holds those bytes, else refused. `damaged`: files found
    unreadable (ONNX Runtime refused them), passed over; the cache's is built again."""
    import onnx

    from ...errors import UserError
    from ...io.cache import model_hash, prune_cache, touch
    from ...io.files import cache_write, load_unchanged

    beside = sibling_path(artifact, content_layer, sha256=sha256)
    target = cached_path(artifact, content_layer, sha256)
    if os.path.isfile(beside) and beside not in damaged:  # never raises (unreadable: a miss)
        return beside
    if target in damaged:
        with contextlib.suppress(OSError):  # rebuilt below (and not written where it is stuck)
            target.unlink()
    elif os.path.isfile(target):
        touch(target)
        return target

    def build():
        if model_hash(artifact) != sha256:
            raise UserError(f"{artifact} was replaced (by an export?) after this run loaded it; "
                            "run again to use the new model.")
        return build_gradient_graph(artifact, content_layer, sha256)

    loaded = _path_of_open_file(source)
    if loaded:  # the bytes the engine loaded, even once another file was renamed onto `artifact`
        model = build_gradient_graph(loaded, content_layer, sha256)
    else:
        model = load_unchanged(artifact, build)  # built from the bytes whose hash was checked
    if cache_write(target, lambda tmp: onnx.save(model, str(tmp))):
        prune_cache(keep=target)
        return target
    return model.SerializeToString()


def _path_of_open_file(file) -> str | None:
    """A path that opens the same file as the open `file`, even once it was renamed over (Linux's
    /proc/self/fd, macOS's /dev/fd); None without `file` or elsewhere."""
    if file is None:
        return None
    for folder in ("/proc/self/fd", "/dev/fd"):
        path = f"{folder}/{file.fileno()}"
        if os.path.exists(path):
            return path
    return None


def remove_stale_siblings(artifact: str | Path, content_layer: str) -> None:
    """Delete the gradient graphs beside `artifact` made for an earlier file at its path (a
    re-export, or the loser of two exports at once): only the current file's graph stays."""
    artifact = Path(artifact)
    keep = sibling_path(artifact, content_layer).name
    pattern = re.compile(rf"{re.escape(artifact.stem)}\.gradient-\w+-[0-9a-f]{{16}}\.onnx")
    for path in artifact.parent.glob(f"{glob.escape(artifact.stem)}.gradient-*.onnx"):
        if path.name != keep and pattern.fullmatch(path.name):
            with contextlib.suppress(OSError):  # removed meanwhile, or not ours to remove
                path.unlink(missing_ok=True)
