"""The work a model asks of an engine per image, and its cap: what the C engine checks at load
(c/fpgai.c, fpgai_op_work and check_work), here for the numpy and torch engines and the exporter.

The work of one op, in operations per image (C, H, W its output shape):

    conv                C*H*W * (Cin/groups)*kh*kw      multiply-accumulates
    linear              C * K (its input's C*H*W)        multiply-accumulates
    maxpool, avgpool    C*H*W * kh*kw                    window reads, padding included
    adaptive_avgpool    C * (its windows' rows summed over the output rows)
                          * (its windows' columns summed over the output columns)    window reads
    the other kinds     C*H*W                            output values (input, add, concat, lut,
                                                         mul, shuffle, slice, upsample)

A model whose ops need more than the cap together (DEFAULT_MAX_WORK, config.MAX_WORK, --max_work;
c/inference --max-work) is refused with one line naming the total and the op that adds the most.
"""
import math

from model.fileio import ModelFileError

# 2^35 = 34.4 G operations per image, C's DEFAULT_MAX_WORK: the shipped models need 0.42 M (LeNet) to
# 0.23 G (VGG13), torchvision's ResNet50 at 224x224 4.1 G, VGG19 19.6 G
DEFAULT_MAX_WORK = 1 << 35


_cap = DEFAULT_MAX_WORK     # this process's cap: set_max_work (the stages: --max_work)


class WorkError(ModelFileError):
    """A model over the work cap (a ModelFileError: the stages print it as one `error:` line)."""


def set_max_work(n):
    """This process's cap, what every engine and the exporter check unless given their own (as
    config.apply_threads sets the threads): the stages call it with --max_work."""
    global _cap
    if int(n) < 1:
        raise ValueError(f"the work cap must be a positive integer, not {n}")
    _cap = int(n)


def max_work():
    """This process's cap (DEFAULT_MAX_WORK unless set_max_work changed it)."""
    return _cap


def _adaptive_reads(out, size):
    """Rows (or columns) of input `size` that an adaptive pool's windows read over its `out` outputs:
    PyTorch's windows [floor(o*size/out), ceil((o+1)*size/out))."""
    return sum(-(-(o + 1) * size // out) - o * size // out for o in range(out))


def op_work(op, quant_list):
    """Operations per image of one op (a quant_list entry) of quant_list."""
    c, h, w = op["shape"]
    kind = op["op"]
    if kind == "conv":
        cin = quant_list[op["inputs"][0]]["shape"][0]
        return c * h * w * (cin // op["groups"]) * op["kernel"][0] * op["kernel"][1]
    if kind == "linear":
        return c * math.prod(quant_list[op["inputs"][0]]["shape"])
    if kind in ("maxpool", "avgpool"):
        return c * h * w * op["kernel"][0] * op["kernel"][1]
    if kind == "adaptive_avgpool":
        _, ih, iw = quant_list[op["inputs"][0]]["shape"]
        return c * _adaptive_reads(h, ih) * _adaptive_reads(w, iw)
    return c * h * w


def model_work(quant_list):
    """(total operations per image, index of the op that adds the most (the first of equals), its work)."""
    works = [op_work(op, quant_list) for op in quant_list]
    top = max(range(len(works)), key=lambda i: (works[i], -i))
    return sum(works), top, works[top]


def check(quant_list, cap=None):
    """Raise WorkError when the graph needs more than `cap` (None: this process's, max_work())
    operations per image; return the total."""
    cap = _cap if cap is None else int(cap)
    total, top, most = model_work(quant_list)
    if total > cap:
        op = quant_list[top]
        raise WorkError(f"{quant_list[0].get('model', 'model')}: model needs {total} operations per image (op {top} "
                        f"'{op['name']}' {op['op']} adds {most}); the cap is {cap} (--max_work=N raises it)")
    return total
