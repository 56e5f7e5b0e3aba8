"""The spellings real models use: free reshapes and dropout, padding="same", the mean over H,W,
input normalisation folded into a per-channel affine op, and the one-line refusals of the rest."""
import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from model.quant.graph_passes import fold_input_normalisation
from tests.graph_checks import quantize, refusal, tracks_float


class Head(nn.Module):
    """conv -> ReLU -> `flat` (a spelling of flatten) -> linear."""

    def __init__(self, flat, pool=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1) if pool else nn.Identity()
        self.flat = flat
        self.fc = nn.Linear(4 if pool else 4 * 4 * 4, 5)
        self.drop, self.ident, self.flatten = nn.Dropout(0.5), nn.Identity(), nn.Flatten()

    def forward(self, x):
        return self.fc(self.flat(self, self.gap(torch.relu(self.conv(x)))))


FLATTEN = {
    "view_size0": lambda m, x: x.view(x.size(0), -1),
    "view_minus1": lambda m, x: x.view(-1, 64),
    "reshape_shape0": lambda m, x: x.reshape(x.shape[0], -1),
    "torch_reshape": lambda m, x: torch.reshape(x, (x.size(0), -1)),
    "torch_flatten": lambda m, x: torch.flatten(x, 1),
    "method_flatten": lambda m, x: x.flatten(1),
    "nn_flatten": lambda m, x: m.flatten(x),
    "contiguous_view": lambda m, x: x.contiguous().view(x.size(0), -1),
    "dropout_module": lambda m, x: m.drop(torch.flatten(x, 1)),
    "f_dropout": lambda m, x: F.dropout(x.flatten(1), 0.3, training=m.training),
    "identity": lambda m, x: m.ident(x).flatten(1),
    "unsqueeze_squeeze": lambda m, x: x.flatten(1).unsqueeze(-1).squeeze(-1),
}
POOLED = {
    "squeeze_squeeze": lambda m, x: x.squeeze(-1).squeeze(-1),
    "view_size0": lambda m, x: x.view(x.size(0), -1),
    "squeeze_dims": lambda m, x: torch.squeeze(x, (2, 3)),
}


@pytest.mark.parametrize("spelling", list(FLATTEN))
def test_flatten_spellings_are_free(spelling):
    net = Head(FLATTEN[spelling])
    kinds, _, ql, test, logits = quantize(net)
    assert kinds == ["input", "conv", "linear"]
    tracks_float(net, ql, test, logits)


@pytest.mark.parametrize("spelling", list(POOLED))
def test_squeezes_of_a_pooled_map_are_free(spelling):
    net = Head(POOLED[spelling], pool=True)
    kinds, _, ql, test, logits = quantize(net)
    assert kinds == ["input", "conv", "avgpool", "linear"]
    tracks_float(net, ql, test, logits)


class Fn(nn.Module):
    """conv(3->4, 3x3, pad 1) -> fn(self, x): a one-off graph for a refusal or a spelling."""

    def __init__(self, fn, **conv):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, **({"kernel_size": 3, "padding": 1} | conv))
        self.fc = nn.Linear(4, 5)
        self.fn = fn

    def forward(self, x):
        return self.fn(self, self.conv(x))


def test_permuting_data_is_refused():
    msg = refusal(Fn(lambda m, x: m.fc(x.transpose(1, 3).mean((1, 2)))))
    assert "transpose" in msg and "'transpose'" in msg and "permutes" in msg
    msg = refusal(Fn(lambda m, x: m.fc(x.permute(0, 2, 3, 1).mean((1, 2)))))
    assert "permute" in msg and "permutes" in msg


def test_a_reshape_across_the_batch_is_refused():
    msg = refusal(Fn(lambda m, x: x.view(-1, 4)))
    assert "batch" in msg and "view" in msg


def test_a_reshape_that_changes_chw_only_feeds_a_linear_layer():
    msg = refusal(Fn(lambda m, x: F.avg_pool2d(x.view(x.size(0), 16, 4, 4), 2)))
    assert "reshape" in msg and "linear" in msg
    msg = refusal(Fn(lambda m, x: m.fc(x.view(x.size(0), 4, 64, 1).mean((2, 3)))))
    assert "avgpool" in msg and "4x64x1" in msg and "linear" in msg


MEANS = {
    "mean_23": lambda m, x: m.fc(x.mean((2, 3))),
    "mean_neg": lambda m, x: m.fc(x.mean([-1, -2])),
    "mean_keepdim": lambda m, x: m.fc(x.mean(dim=(2, 3), keepdim=True).flatten(1)),
    "torch_mean": lambda m, x: m.fc(torch.mean(x, dim=[2, 3])),
    "adaptive_1": lambda m, x: m.fc(F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1)),
    "adaptive_11": lambda m, x: m.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)),
}


@pytest.mark.parametrize("spelling", list(MEANS))
def test_means_over_hw_are_a_global_avgpool(spelling):
    net = Fn(MEANS[spelling])
    kinds, _, ql, test, logits = quantize(net)
    assert kinds == ["input", "conv", "avgpool", "linear"]
    assert ql[2]["kernel"] == ql[2]["stride"] == [8, 8] and ql[2]["shape"] == [4, 1, 1]
    tracks_float(net, ql, test, logits)


def test_other_means_are_refused():
    msg = refusal(Fn(lambda m, x: x.mean(1)))
    assert "mean" in msg and "H and W" in msg


@pytest.mark.parametrize("size", [3, (5, 2), (12, 8), (4, 16)])
def test_adaptive_pools_with_uneven_windows_are_their_own_kind(size):
    """8x8 -> sizes that do not divide it: windows of several sizes, overlapping or repeating."""
    net = Fn(lambda m, x: m.fc(F.adaptive_avg_pool2d(F.adaptive_avg_pool2d(x, size), 1).flatten(1)))
    kinds, state, ql, test, logits = quantize(net)
    assert kinds == ["input", "conv", "adaptive_avgpool", "avgpool", "linear"]
    assert len(state[ql[2]["name"] + ".multiplier"]) == ql[2]["shape"][1] * ql[2]["shape"][2]
    tracks_float(net, ql, test, logits)


@pytest.mark.parametrize("kernel,dilation,pad", [(3, 1, [1, 1, 1, 1]), (5, 1, [2, 2, 2, 2]), ((3, 5), 1, [1, 2, 1, 2]),
                                                (1, 1, [0, 0, 0, 0]), (2, 1, [0, 0, 1, 1]), ((4, 3), 1, [1, 1, 2, 1]),
                                                (3, 2, [2, 2, 2, 2]), (2, 3, [1, 1, 2, 2]), (4, (1, 2), [1, 3, 2, 3])])
def test_padding_same_is_torchs_for_every_kernel_and_dilation(kernel, dilation, pad):
    """d (k - 1) in all, the smaller half before: asymmetric for even kernels with odd dilation."""
    net = Fn(lambda m, x: m.fc(x.mean((2, 3))), kernel_size=kernel, padding="same", dilation=dilation)
    kinds, _, ql, test, logits = quantize(net)
    assert ql[1]["padding"] == pad and ql[1]["shape"] == [4, 8, 8]
    tracks_float(net, ql, test, logits)


def test_padding_valid():
    _, _, ql, _, _ = quantize(Fn(lambda m, x: m.fc(x.mean((2, 3))), padding="valid"))
    assert ql[1]["padding"] == [0, 0, 0, 0] and ql[1]["shape"] == [4, 6, 6]


ZERO_PADS = {   # spelling, [top, left, bottom, right] of the conv reading it (its own padding 1 added)
    "F.pad": (lambda m, x: m.fc(m.conv2(F.pad(x, (0, 1, 1, 0))).mean((2, 3))), [2, 1, 1, 2]),
    "F.pad_w_only": (lambda m, x: m.fc(m.conv2(F.pad(x, [1, 0], "constant", 0.0)).mean((2, 3))), [1, 2, 1, 1]),
    "ZeroPad2d": (lambda m, x: m.fc(m.conv2(m.zero_pad(x)).mean((2, 3))), [1, 2, 2, 1]),
    "ConstantPad2d": (lambda m, x: m.fc(m.conv2(m.pad(x)).mean((2, 3))), [1, 2, 2, 2]),
}


class Padded(nn.Module):
    """conv -> a zero pad (spelled by fn) -> conv2 (3x3, its own padding 1) -> mean -> fc."""

    def __init__(self, fn):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pad = nn.ConstantPad2d((1, 1, 0, 1), 0.0)
        self.zero_pad = nn.ZeroPad2d((1, 0, 0, 1))
        self.fc = nn.Linear(4, 5)
        self.fn = fn

    def forward(self, x):
        return self.fn(self, self.conv(x))


@pytest.mark.parametrize("spelling", list(ZERO_PADS))
def test_a_zero_pad_is_folded_into_the_conv_reading_it(spelling):
    fn, pad = ZERO_PADS[spelling]
    net = Padded(fn)
    kinds, _, ql, test, logits = quantize(net)
    assert kinds == ["input", "conv", "conv", "avgpool", "linear"] and ql[2]["padding"] == pad
    tracks_float(net, ql, test, logits)


def test_pads_that_are_not_a_convs_zero_padding_are_pad_ops():
    for fn in (lambda m, x: F.pad(x, (1, 1, 1, 1), value=0.5), lambda m, x: F.pad(x, (1, 1, 1, 1), mode="reflect"),
               lambda m, x: F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 2)):
        net = Padded(fn)
        kinds, state, ql, test, logits = quantize(net)
        assert [op["op"] for op in ql].count("pad") == 1, kinds
        tracks_float(net, ql, test, logits)
    for fn in (lambda m, x: F.pad(x, (0, 0, 0, 0, 1, 1)), lambda m, x: m.conv2(F.pad(x, (-1, 0, 0, 0)))):
        msg = refusal(Padded(fn))
        assert "function pad" in msg and "supported: (left, right) or (left, right, top, bottom)" in msg
    msg = refusal(Padded(lambda m, x: m.conv2(F.pad(x, (0, 2, 0, 0)))))      # 1 + 2 of padding: a 3x3 reaches 3
    assert "conv2" in msg and "[1, 1, 1, 3]" in msg and "reaches past its 3x3 window" in msg


def test_padding_modes_and_dilated_pools_are_refused():
    msg = refusal(Fn(lambda m, x: x, padding_mode="reflect"))
    assert "padding_mode='reflect'" in msg
    msg = refusal(Fn(lambda m, x: F.max_pool2d(x, 2, dilation=2)))
    assert "maxpool" in msg and "dilation" in msg


# --- input normalisation -------------------------------------------------------------------

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class Normalised(nn.Module):
    def __init__(self, spelling):
        super().__init__()
        self.spelling = spelling
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD))
        self.inv_std = torch.tensor([1 / s for s in STD]).view(3, 1, 1)     # a plain attribute (fx constant)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        s = self.spelling
        if s == "buffers":
            x = (x - self.mean) / self.std.view(1, -1, 1, 1)
        elif s == "floats":
            x = (x - 0.5) / 0.25
        elif s == "mul_add":
            x = x * self.inv_std + (-self.mean.view(3, 1, 1) * self.inv_std)
        elif s == "methods":
            x = x.sub(self.mean).div(self.std[:, None, None])
        elif s == "scale_shift":
            x = 2.0 * x - 1.0
        elif s == "reversed":
            x = (1.0 - x) / self.std[:, None, None]
        elif s == "torch_functions":
            x = torch.div(torch.sub(x, self.mean), self.std.reshape(1, 3, 1, 1))
        elif s == "in_place":
            x = x.sub_(self.mean)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 1), 1))


SPELLINGS = ["buffers", "floats", "mul_add", "methods", "scale_shift", "reversed", "torch_functions"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_the_input_normalisation_pass_computes_the_same_float_values(spelling):
    net = Normalised(spelling).eval()
    gm = fx.symbolic_trace(net)
    folded = fold_input_normalisation(gm, 3)
    assert folded
    assert not [n for n in gm.graph.nodes if n.op == "get_attr"]
    assert isinstance(gm.input_normalisation, nn.BatchNorm2d)
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("mode", ["per_channel", "per_tensor"])
def test_the_input_normalisation_is_one_affine_op(spelling, mode):
    net = Normalised(spelling)
    kinds, state, ql, test, logits = quantize(net, mode=mode)
    assert kinds == ["input", "conv", "conv", "avgpool", "linear"]
    norm = ql[1]
    assert norm["name"] == "input_normalisation" and norm["groups"] == 3 and norm["kernel"] == [1, 1]
    tracks_float(net, ql, test, logits)


def test_constant_arithmetic_elsewhere_is_refused():
    msg = refusal(Fn(lambda m, x: m.fc((x * 2.0).mean((2, 3)))))
    assert "constant arithmetic" in msg and "'mul'" in msg and "input" in msg
    msg = refusal(Fn(lambda m, x: m.fc((x - m.conv.bias.view(1, -1, 1, 1)).mean((2, 3)))))
    assert "constant arithmetic" in msg


def test_in_place_normalisation_is_refused():
    msg = refusal(Normalised("in_place"))
    assert "in-place" in msg and "sub_" in msg


def test_a_normalisation_constant_that_is_not_per_channel_is_refused():
    class PerColumn(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.rand(8))       # broadcasts along W, not C
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x - self.mean)
    msg = refusal(PerColumn())
    assert "per channel" in msg and "[8]" in msg


# --- one line naming the node, the op and the closest supported spelling ---------------------

def test_unsupported_ops_are_named_in_one_line():
    msg = refusal(Fn(lambda m, x: F.interpolate(x, scale_factor=2, mode="bilinear")))
    assert "unsupported function interpolate" in msg and "at node 'interpolate'" in msg
    assert "mode='bilinear'" in msg and "upsampling" in msg and "mode='nearest' with integer factors" in msg
    msg = refusal(Fn(lambda m, x: torch.abs(x)))
    assert "unsupported function abs at node 'abs" in msg and "supported op kinds: input, conv" in msg
    msg = refusal(Fn(lambda m, x: m.fc(F.dropout(x, 0.5).mean((2, 3)))))
    assert "training=self.training" in msg
    msg = refusal(Fn(lambda m, x: F.conv2d(x, m.fc.weight.view(5, 4, 1, 1))))
    assert "nn.Conv2d" in msg


def test_a_concat_of_one_tensor_is_free():
    kinds, *_ = quantize(Fn(lambda m, x: m.fc(torch.cat([x], 1).mean((2, 3)))))
    assert kinds == ["input", "conv", "avgpool", "linear"]


def test_ceil_mode_maxpool_with_partial_last_windows():
    net = Fn(lambda m, x: m.fc(F.max_pool2d(x, 3, 2, ceil_mode=True).mean((2, 3))))
    kinds, _, ql, test, logits = quantize(net)          # 8x8 -> 4x4 (3x3 without ceil_mode)
    assert kinds == ["input", "conv", "maxpool", "avgpool", "linear"] and ql[2]["shape"] == [4, 4, 4]
    assert ql[2]["ceil_mode"] == 1
    tracks_float(net, ql, test, logits)


def test_a_size_read_does_not_block_fusing_the_relu():
    # the conv's output has two users in fx, the ReLU and x.size(0): the size read is no tensor user
    net = Fn(lambda m, x: m.fc(torch.relu(x).mean((2, 3)).view(x.size(0), -1)))
    kinds, _, ql, test, logits = quantize(net)
    assert kinds == ["input", "conv", "avgpool", "linear"] and ql[1]["qmin"] == max(0, ql[1]["zero_point"])
    tracks_float(net, ql, test, logits)
