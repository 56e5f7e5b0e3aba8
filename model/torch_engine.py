"""The quantized torch model: the same integer graph computed with torch ops.

An independent implementation of the numpy specification (direct F.conv2d
instead of im2col, depthwise convs as shifted int64 products, avg_pool2d as a
window sum): activations are int64 tensors holding uint8 values; other
convolutions run in float64, exact because every partial sum is an integer
below 2^53. Results must match the numpy model bit for bit.
"""
import torch
import torch.nn.functional as F


def _requantize(acc, m, shift, op):
    out = op["zero_point"] + ((acc * m + ((1 << shift) >> 1)) >> shift)
    return out.clamp_(op["qmin"], op["qmax"])


def _depthwise(x, w, stride, padding):
    """Depthwise conv as kh*kw shifted products summed in exact int64: faster here than torch's
    float64 grouped conv (MobileNetV2's quant column: 101 vs 78 images/s)."""
    kh, kw = w.shape[2:]
    oh = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    ow = (x.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    acc = torch.zeros(x.shape[0], x.shape[1], oh, ow, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i:i + stride[0] * (oh - 1) + 1:stride[0], j:j + stride[1] * (ow - 1) + 1:stride[1]]
            acc += w[:, 0, i, j].view(1, -1, 1, 1) * window
    return acc


class TorchIntegerModel(torch.nn.Module):
    def __init__(self, state_dict, quant_list):
        super().__init__()
        self.ops = [dict(op) for op in quant_list]
        self.zps = [op["zero_point"] for op in quant_list]
        self.p = {}
        for key, value in state_dict.items():
            name, field = key.rsplit(".", 1)
            self.p.setdefault(name, {})[field] = value.to(torch.float64 if field == "weight" else torch.int64)

    def _conv_like(self, x, op, in_zp):
        p = self.p[op["name"]]
        w = p["weight"] - op["weight_zero_point"]
        if op["op"] == "linear":
            acc, view = F.linear((x - in_zp).to(torch.float64).flatten(1), w).round(), (1, -1)
        elif op["groups"] == x.shape[1] == w.shape[0]:
            acc, view = _depthwise(x - in_zp, w.to(torch.int64), op["stride"], op["padding"]), (1, -1, 1, 1)
        else:
            acc = F.conv2d((x - in_zp).to(torch.float64), w, stride=op["stride"], padding=op["padding"],
                           groups=op["groups"]).round()
            view = (1, -1, 1, 1)
        acc = acc.to(torch.int64) + p["bias"].view(view)
        out = _requantize(acc, p["multiplier"].view(view), p["shift"].view(view), op)
        return out if op["op"] == "conv" else out[:, :, None, None]

    @torch.no_grad()
    def forward(self, images):
        values = []
        for op in self.ops:
            kind = op["op"]
            x = values[op["inputs"][0]] if op["inputs"] else None
            in_zp = self.zps[op["inputs"][0]] if op["inputs"] else 0
            if kind == "input":
                out = images.to(torch.int64)
            elif kind in ("conv", "linear"):
                out = self._conv_like(x, op, in_zp)
            elif kind == "maxpool":
                out = F.max_pool2d(x.to(torch.float64), op["kernel"], op["stride"], op["padding"]).to(torch.int64)
            elif kind == "avgpool":
                total = F.avg_pool2d(x.to(torch.float64), op["kernel"], op["stride"], divisor_override=1)
                count = op["kernel"][0] * op["kernel"][1]
                out = _requantize(total.round().to(torch.int64) - count * in_zp, op["multiplier"], op["shift"], op)
            elif kind == "add":
                a, b = (values[i] - self.zps[i] for i in op["inputs"])
                ma, mb = op["multipliers"]
                out = (op["zero_point"] + ((a * ma + b * mb + ((1 << op["shift"]) >> 1)) >> op["shift"]))
                out = out.clamp_(op["qmin"], op["qmax"])
            else:
                raise ValueError(f"unknown op '{kind}'")
            values.append(out)
        return values[-1].flatten(1)
