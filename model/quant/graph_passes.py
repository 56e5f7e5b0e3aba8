"""fx graph rewrites run on the traced float model around BN folding, before calibration.

fold_input_normalisation: constant arithmetic applied to the input in `forward`, such as
`(x - mean) / std`, `x * 2 - 1`, `x.sub(self.mean).div(self.std)`, with python numbers or
constant tensors (buffers, attributes: get_attr nodes, and anything computed from constants
only, like `self.mean.view(1, -1, 1, 1)`) that are per channel (shape [1, C, 1, 1], [C, 1, 1],
or a scalar), becomes one inserted per-channel affine module
`nn.BatchNorm2d(C, eps=0)` with running_mean 0, running_var 1, weight a and bias b, where
`y = a * x + b` is the chain composed in float64: the same values as the original expression up
to float rounding. BN folding leaves it alone (no conv before it), and the quantizer runs it
as the standalone-BatchNorm path (model/ops/conv.py: a 1x1 depthwise conv on the raw pixels).
Only the chain directly on the input is folded; constant arithmetic anywhere else stays in the
graph and the quantizer refuses it by name.

fold_zero_padding: a zero pad (F.pad(x, (l, r, t, b)), nn.ZeroPad2d, nn.ConstantPad2d(p, 0.))
that only Conv2d layers read becomes part of their padding (TF-style "same" padding, asymmetric
padding): each conv module is wrapped in model.ops.conv.ZeroPaddedConv, the same float function.
"""
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

NORM_MODULE = "input_normalisation"

# (kind, whether the tensor may be the second operand): y -> y + c, y - c, c - y, y * c, y / c
ARITH = {operator.add: "add", operator.iadd: "add", torch.add: "add", "add": "add",
         operator.sub: "sub", operator.isub: "sub", torch.sub: "sub", "sub": "sub",
         operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", "mul": "mul",
         operator.truediv: "div", operator.itruediv: "div", torch.div: "div", "div": "div", "true_divide": "div"}
INPLACE = {"add_", "sub_", "mul_", "div_"}


def arith_kind(node):
    """'add'/'sub'/'mul'/'div' for an elementwise arithmetic node, else None."""
    if node.op in ("call_function", "call_method"):
        return ARITH.get(node.target)
    return None


def constant_nodes(graph):
    """The nodes whose value depends on no placeholder (get_attr and what is computed from them)."""
    const = set()
    for node in graph.nodes:
        if node.op == "get_attr":
            const.add(node)
        elif node.op in ("call_function", "call_method"):
            deps = node.all_input_nodes
            if deps and all(d in const for d in deps):
                const.add(node)
    return const


def _evaluate(gm, node, cache):
    """The value of a constant node (get_attr, or a function of constants)."""
    if node in cache:
        return cache[node]
    if node.op == "get_attr":
        value = gm
        for part in node.target.split("."):
            value = getattr(value, part)
    else:
        load = lambda a: _evaluate(gm, a, cache)
        args, kwargs = fx.node.map_arg(node.args, load), fx.node.map_arg(node.kwargs, load)
        if node.op == "call_function":
            value = node.target(*args, **kwargs)
        else:
            value = getattr(args[0], node.target)(*args[1:], **kwargs)
    cache[node] = value
    return value


def _per_channel(value, channels):
    """float64 [C] of a constant broadcast per channel against N x C x H x W, or None."""
    t = torch.as_tensor(value, dtype=torch.float64).detach()
    if t.dim() > 4:
        return None
    shape = [1] * (4 - t.dim()) + list(t.shape)
    if shape[0] != 1 or shape[2] != 1 or shape[3] != 1 or shape[1] not in (1, channels):
        return None
    return t.reshape(-1).expand(channels).clone()


class NormalisationError(ValueError):
    pass


def _step(gm, node, tensor, channels, cache, const):
    """(kind, constant [C] float64, tensor first?) of one arithmetic node of the chain, or None."""
    kind = arith_kind(node)
    if kind is None or node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("rounding_mode") is not None:
        return None
    args = list(node.args) + [node.kwargs[k] for k in ("other",) if k in node.kwargs]
    if len(args) != 2 or tensor not in args:
        return None
    first = args[0] is tensor
    other = args[1] if first else args[0]
    if other is tensor:
        return None
    if isinstance(other, fx.Node):
        if other not in const:
            return None
        other = _evaluate(gm, other, cache)
    if not isinstance(other, (int, float, torch.Tensor)) or isinstance(other, bool):
        return None
    c = _per_channel(other, channels)
    if c is None:
        shape = list(other.shape) if isinstance(other, torch.Tensor) else []
        raise NormalisationError(f"input normalisation at node '{node.name}': constant of shape {shape} is not per "
                                 f"channel (use a scalar or a [1, {channels}, 1, 1] / [{channels}, 1, 1] tensor)")
    if kind == "div" and not first:
        return None
    return kind, c, first


def fold_input_normalisation(gm, channels):
    """Rewrite the constant arithmetic chain on gm's input into one affine BatchNorm2d module
    (in place); returns the list of folded node names (empty when there is none)."""
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return []
    const = constant_nodes(graph)
    cache = {}
    tensor, chain = placeholders[0], []
    a, b = torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    while True:
        users = [u for u in tensor.users if arith_kind(u) or (u.op == "call_method" and u.target in INPLACE)]
        if len(users) != 1 or (chain and len(tensor.users) != 1):
            break
        node = users[0]
        if node.op == "call_method" and node.target in INPLACE:
            raise NormalisationError(f"in-place arithmetic '{node.target}' on the input at node '{node.name}' "
                                     f"is unsupported: write it out of place ((x - mean) / std)")
        step = _step(gm, node, tensor, channels, cache, const)
        if step is None:
            break
        kind, c, first = step
        if kind == "add":
            b = b + c
        elif kind == "sub":
            a, b = (a, b - c) if first else (-a, c - b)
        elif kind == "mul":
            a, b = a * c, b * c
        else:
            a, b = a / c, b / c
        chain.append(node)
        tensor = node
    if not chain:
        return []
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()) or (a == 0).any():
        raise NormalisationError(f"input normalisation ending at node '{chain[-1].name}' is degenerate "
                                 f"(a zero or non-finite scale)")
    norm = nn.BatchNorm2d(channels, eps=0.0)
    with torch.no_grad():
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0)
        norm.weight.copy_(a.float())
        norm.bias.copy_(b.float())
    norm.eval()
    name = NORM_MODULE
    while hasattr(gm, name):
        name += "_"
    gm.add_submodule(name, norm)
    last = chain[-1]
    with graph.inserting_after(last):
        new = graph.call_module(name, (placeholders[0],))
    last.replace_all_uses_with(new)
    for node in reversed(chain):
        graph.erase_node(node)
    for node in reversed(list(graph.nodes)):          # constants only the chain read
        if node in const and not node.users:
            graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return [n.name for n in chain]


def _zero_pad(gm, node):
    """[top, left, bottom, right] of a constant-zero pad of H and W (no cropping), else None."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if not isinstance(mod, (nn.ZeroPad2d, nn.ConstantPad2d)) or getattr(mod, "value", 0.0) != 0:
            return None
        pad = mod.padding
    elif node.op == "call_function" and node.target is F.pad:
        args = dict(zip(("input", "pad", "mode", "value"), node.args), **node.kwargs)
        if args.get("mode", "constant") != "constant" or args.get("value") not in (None, 0, 0.0):
            return None
        pad = args.get("pad")
    else:
        return None
    if not isinstance(pad, (tuple, list)) or len(pad) not in (2, 4) or not all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pad):
        return None
    left, right, top, bottom = (*pad, 0, 0)[:4]
    return [top, left, bottom, right]


def fold_zero_padding(gm):
    """Fold every zero pad that only plain Conv2d layers (each called once) read into their
    padding (in place); returns the folded pads' node names."""
    from model.ops.conv import ZeroPaddedConv
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = []
    for node in list(gm.graph.nodes):
        pads = _zero_pad(gm, node)
        users = list(node.users)
        if pads is None or not users or not all(
                u.op == "call_module" and type(gm.get_submodule(u.target)) is nn.Conv2d and calls[u.target] == 1
                and u.args[0] is node and len(u.args) == 1 and not u.kwargs for u in users):
            continue
        for user in users:
            parent, _, attr = user.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, attr,
                    ZeroPaddedConv(gm.get_submodule(user.target), pads))
            user.replace_input_with(node, node.args[0])
        gm.graph.erase_node(node)
        folded.append(node.name)
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded
