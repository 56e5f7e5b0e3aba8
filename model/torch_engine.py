"""The quantized torch model: the same integer graph computed with torch ops.

An independent implementation of the numpy specification (direct F.conv2d
instead of im2col, avg_pool2d as a window sum): activations are int64 tensors
holding uint8 values; convolutions run in float64, exact because every partial
sum is an integer below 2^53. Results must match the numpy model bit for bit.
"""
import torch
import torch.nn.functional as F


def _requantize(acc, m, shift, op):
    out = op["zero_point"] + ((acc * m + ((1 << shift) >> 1)) >> shift)
    return out.clamp_(op["qmin"], op["qmax"])


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
        xs = (x - in_zp).to(torch.float64)
        w = p["weight"] - op["weight_zero_point"]
        if op["op"] == "conv":
            acc = F.conv2d(xs, w, stride=op["stride"], padding=op["padding"], groups=op["groups"])
            view = (1, -1, 1, 1)
        else:
            acc = F.linear(xs.flatten(1), w)
            view = (1, -1)
        acc = acc.round().to(torch.int64) + p["bias"].view(view)
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
