"""The integer graph, typed: a Graph holds its ops in order (op i produces tensor i, reading only
earlier tensors), and Graph.walk is the one walk over them that the engines and formats run.

On disk the graph stays the user's `(state_dict, quant_list)` pair (torch.load(..., weights_only=True)
reads it; docs/contract.md describes every field). Graph.from_tuple and Graph.to_tuple convert
between the two, here and nowhere else. The quantizer writes that pair: its builder
(model/quant/quantize.py) emits quant_list entries, and everything that reads a graph reads a Graph.
"""
from dataclasses import dataclass, field

# the fields every quant_list entry holds; the others are the kind's own (KINDS[kind]) or, on op 0,
# the graph's header (model, dataset, fingerprint, settings)
COMMON = ("op", "name", "inputs", "shape", "scale", "zero_point", "qmin", "qmax")


def last_readers(inputs):
    """[i]: the last op reading tensor i (i itself when none does), of the ops' input lists `inputs`:
    when the engines, the C memory plan and the report may let a tensor go."""
    last = list(range(len(inputs)))
    for i, op_inputs in enumerate(inputs):
        for j in op_inputs:
            last[j] = max(last[j], i)
    return last


@dataclass
class Op:
    """One op: its output tensor's shape and quantization, its inputs, its kind's own fields
    (`attrs`: kernel, stride, padding, groups, ...; read as op.kernel) and its tensors."""
    name: str
    kind: str                   # a KINDS name: conv, linear, maxpool, ...
    inputs: list                # indices of the ops it reads, each below its own
    shape: list                 # [C, H, W] of its output
    scale: float                # real = scale * (q - zero_point)
    zero_point: int
    qmin: int                   # its output's clamp bounds (a fused ReLU/ReLU6 narrows them)
    qmax: int
    in_zero_points: list        # its inputs' zero points, in order
    attrs: dict = field(default_factory=dict)    # the kind's own fields
    tensors: dict = field(default_factory=dict)  # weight, bias, multiplier, shift, table (state_dict NAME.FIELD)

    def __getattr__(self, key):
        attrs = self.__dict__.get("attrs")
        if attrs is not None and key in attrs:
            return attrs[key]
        raise AttributeError(f"op '{self.__dict__.get('name')}' ({self.__dict__.get('kind')}) has no field '{key}'")


@dataclass
class Graph:
    ops: list                   # list[Op], op 0 the input
    header: dict                # op 0's header fields: model, dataset, fingerprint, the quantizer's settings

    @classmethod
    def from_tuple(cls, state_dict, quant_list, convert=None):
        """The Graph of a `(state_dict, quant_list)` pair; convert(field, tensor) (None: as they are)
        turns each tensor into what the caller's kernels read (numpy arrays, int64, ...)."""
        tensors = {}
        for key, value in state_dict.items():
            name, kind_field = key.rsplit(".", 1)
            tensors.setdefault(name, {})[kind_field] = value if convert is None else convert(kind_field, value)
        ops = []
        for i, entry in enumerate(quant_list):
            own = {k: v for k, v in entry.items() if k not in COMMON}
            ops.append(Op(name=entry["name"], kind=entry["op"], inputs=list(entry["inputs"]), shape=list(entry["shape"]),
                          scale=entry["scale"], zero_point=entry["zero_point"], qmin=entry["qmin"], qmax=entry["qmax"],
                          in_zero_points=[quant_list[j]["zero_point"] for j in entry["inputs"]],
                          attrs={} if i == 0 else own, tensors=tensors.get(entry["name"], {})))
        return cls(ops, {k: v for k, v in quant_list[0].items() if k not in COMMON})

    def to_tuple(self):
        """The `(state_dict, quant_list)` pair of this graph."""
        state, quant_list = {}, []
        for i, op in enumerate(self.ops):
            entry = {"op": op.kind, "name": op.name, **(self.header if i == 0 else op.attrs), "inputs": list(op.inputs),
                     "shape": list(op.shape), "scale": op.scale, "zero_point": op.zero_point, "qmin": op.qmin,
                     "qmax": op.qmax}
            quant_list.append(entry)
            state.update({f"{op.name}.{key}": value for key, value in op.tensors.items()})
        return state, quant_list

    def walk(self, images, run):
        """The one walk over the graph: yields (op, its output) in order, where run(op, xs) computes an
        op from its inputs' outputs xs (the images for op 0). An output is let go once its last reader
        has run: a caller keeps what it needs."""
        last = last_readers([op.inputs for op in self.ops])
        values = {}
        for i, op in enumerate(self.ops):
            values[i] = run(op, [images] if op.kind == "input" else [values[j] for j in op.inputs])
            yield op, values[i]
            for j in set(op.inputs):
                if last[j] == i:
                    del values[j]

    def run(self, images, run):
        """The last op's output (the logits) of the walk."""
        for _, out in self.walk(images, run):
            pass
        return out
