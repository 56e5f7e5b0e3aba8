"""EXPORT_MODE=onnx: the integer graph as one ONNX model, {model}_model.onnx, that ONNX Runtime runs
bit-exact with the numpy engine (model/engines/np_engine.py) and Netron draws.

    input   image         uint8  N x C x H x W   the raw pixels (op 0), N free
    output  logits        uint8  N x K           the last op's values: np_engine's logits
    output  logits_float  float  N x K           scale * (logits - zero_point)

Each op kind writes its own nodes (OpKind.onnx, in model/ops/KIND.py), reading uint8 tensors and
producing one, with the numpy kernel's op and parameters. Integer throughout: ConvInteger and
MatMulInteger accumulate in int32 (the quantizer proves |acc| < 2^31), the requantizer of
model/qmath.py runs in int64 (OnnxGraph.requantize), tables are a Gather.
"""
import numpy as np
import onnx

from model.engines.np_engine import numpy_graph
from model.ops import KINDS

OPSET = 21
IO_NAMES = ("image", "logits", "logits_float")


class OnnxGraph:
    """The nodes and constants of the graph being written; what an op's emitter calls.
    Node and constant names start with the op's name (Netron shows them)."""

    def __init__(self):
        self.nodes, self.constants, self.shapes = [], [], {}
        self.prefix, self.count = "", 0

    def _name(self, tag):
        self.count += 1
        return f"{self.prefix}/{tag}_{self.count}"

    def const(self, value, dtype, tag="const"):
        """An initializer holding `value` as numpy `dtype`; its name."""
        name = self._name(tag)
        self.constants.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op_type, inputs, out=None, **attrs):
        """A node of one output (named `out`, or after the op); the output's name."""
        out = out or self._name(op_type)
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def cast(self, x, dtype):
        return self.node("Cast", [x], to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def reshape(self, x, shape):
        """Reshape to `shape`, its 0 entries kept from x (the batch)."""
        return self.node("Reshape", [x, self.const(shape, np.int64, "shape")])

    def shape(self, x):
        """[C, H, W] of an op's output (the quant_list's shape)."""
        return self.shapes[x]

    def weight(self, weight, zero_point):
        """(uint8 weight, its zero point) constants of an int8 or uint8 weight. Signed weights are
        stored +128 with zero point +128, the same (w - z_w): ONNX Runtime's u8 x u8 kernels
        accumulate exactly, its u8 x s8 ones may saturate int16 pairs on AVX2 machines."""
        if weight.dtype == np.int8:
            weight, zero_point = weight.astype(np.int16) + 128, zero_point + 128
        return self.const(weight, np.uint8, "weight"), self.const(zero_point, np.uint8, "weight_zero_point")

    def int64_minus(self, x, zero_point):
        """x - zero_point in int64 (x a uint8 tensor)."""
        return self.node("Sub", [self.cast(x, np.int64), self.const(zero_point, np.int64, "zero_point")])

    def rshift_round(self, v, shift):
        """qmath.rshift_round of int64 v (shift broadcasts): floor((v + 2^(shift-1)) / 2^shift). Integer
        Div truncates toward 0 and BitShift is unsigned only, so the floor is (u - Mod(u, d)) / d: Mod
        (fmod=0) takes the divisor's sign, so u - Mod(u, d) is an exact multiple of d = 2^shift > 0."""
        shift = np.asarray(shift, dtype=np.int64)
        d = self.const(np.int64(1) << shift, np.int64, "two_pow_shift")
        u = self.node("Add", [v, self.const((np.int64(1) << shift) >> 1, np.int64, "rounding")])
        return self.node("Div", [self.node("Sub", [u, self.node("Mod", [u, d], fmod=0)]), d])

    def clamp(self, v, op):
        """uint8 of clamp(zero_point + v, qmin, qmax), v int64."""
        v = self.node("Add", [v, self.const(op.zero_point, np.int64, "zero_point")])
        v = self.node("Clip", [v, self.const(op.qmin, np.int64, "qmin"), self.const(op.qmax, np.int64, "qmax")])
        return self.cast(v, np.uint8)

    def requantize(self, acc, m, shift, op):
        """qmath.requantize of an int64 accumulator (m and shift broadcast): uint8."""
        scaled = self.node("Mul", [acc, self.const(m, np.int64, "multiplier")])
        return self.clamp(self.rshift_round(scaled, shift), op)


def onnx_model(state, quant_list):
    """The onnx.ModelProto of the integer graph `(state_dict, quant_list)`."""
    int_graph = numpy_graph(state, quant_list)
    g = OnnxGraph()
    c, h, w = int_graph.ops[0].shape

    def run(op, xs):
        g.prefix = op.name
        out = KINDS[op.kind].onnx(g, xs, op, op.tensors)
        # the op's output tensor carries the op's name (unless a layer is called like an input or output)
        if g.nodes and g.nodes[-1].output[0] == out and op.name not in IO_NAMES:
            out = g.nodes[-1].output[0] = op.name
        g.shapes[out] = op.shape
        return out

    logits = int_graph.run("image", run)
    last = quant_list[-1]
    g.prefix = "output"
    g.node("Flatten", [logits], "logits", axis=1)
    g.node("Mul", [g.node("Sub", [g.cast("logits", np.float32), g.const(last["zero_point"], np.float32)]),
                   g.const(last["scale"], np.float32, "scale")], "logits_float")
    value, outputs = onnx.helper.make_tensor_value_info, int(np.prod(last["shape"]))
    graph = onnx.helper.make_graph(g.nodes, quant_list[0]["model"],
                                   [value("image", onnx.TensorProto.UINT8, ["N", c, h, w])],
                                   [value("logits", onnx.TensorProto.UINT8, ["N", outputs]),
                                    value("logits_float", onnx.TensorProto.FLOAT, ["N", outputs])], g.constants)
    opset = [onnx.helper.make_opsetid("", OPSET)]
    model = onnx.helper.make_model(graph, opset_imports=opset, ir_version=onnx.helper.find_min_ir_version_for(opset),
                                   producer_name="FPGAI export_quant_model.py")
    onnx.helper.set_model_props(model, {key: str(quant_list[0][key]) for key in ("model", "dataset", "fingerprint")})
    return model


def onnx_bytes(state, quant_list):
    return onnx_model(state, quant_list).SerializeToString()
