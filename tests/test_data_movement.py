"""The data-movement kinds (shuffle, slice, upsample): their numpy specifications against torch's
own spellings, how the quantizer finds them in an fx graph, and the one-line refusals of the
forms they do not cover."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.graph import Op
from model.ops import KINDS
from tests.random_models import channel_shuffle, random_quantized
from tests.c_engine import assert_clean, clone, export_graph, mutate_model, read_logits, refused, run, set_field
from tests.graph_checks import quantize, refusal, tracks_float

SHAPE = (3, 8, 8)


class Net(nn.Module):
    """conv(3->8, 3x3, pad 1) -> fn(self, x) -> global average -> linear (5)."""

    def __init__(self, fn, channels=8):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(channels, 5)
        self.fn = fn

    def forward(self, x):
        return self.fc(self.fn(self, self.conv(x)).mean((2, 3)))


def ops_of(net, kind):
    kinds, state, ql, test, logits = quantize(net)
    tracks_float(net, ql, test, logits, tol=0.3)
    return [op for op in ql if op["op"] == kind], ql


# --- the specifications against torch ----------------------------------------------------------

def _spec(kind, x, **fields):
    shape = list(fields.pop("shape", x.shape[1:]))
    op = Op(name=kind, kind=kind, inputs=[0], shape=shape, scale=1.0, zero_point=0, qmin=0, qmax=255,
            in_zero_points=[0], attrs=fields)
    a = KINDS[kind].numpy([x.numpy()], op, {})
    b = KINDS[kind].torch([x], op, {}).numpy()
    np.testing.assert_array_equal(a, b)
    return a


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 12])
def test_shuffle_is_torchvisions_channel_shuffle(groups):
    x = torch.randint(0, 256, (2, 12, 3, 5), dtype=torch.int64)
    got = _spec("shuffle", x, groups=groups)
    np.testing.assert_array_equal(got, channel_shuffle(x, groups).numpy())
    per = 12 // groups
    for i in range(groups):
        for j in range(per):         # out channel j * groups + i = in channel i * (C / groups) + j
            np.testing.assert_array_equal(got[:, j * groups + i], x[:, i * per + j].numpy())


@pytest.mark.parametrize("start,count", [(0, 12), (0, 5), (4, 6), (11, 1)])
def test_slice_is_a_channel_range(start, count):
    x = torch.randint(0, 256, (2, 12, 3, 5), dtype=torch.int64)
    got = _spec("slice", x, channel_start=start, shape=[count, 3, 5])
    np.testing.assert_array_equal(got, x[:, start:start + count].numpy())


@pytest.mark.parametrize("factor", [[1, 1], [2, 2], [2, 1], [1, 3], [3, 2]])
def test_upsample_is_torchs_nearest(factor):
    x = torch.randint(0, 256, (2, 4, 3, 5), dtype=torch.int64)
    got = _spec("upsample", x, factor=factor, shape=[4, 3 * factor[0], 5 * factor[1]])
    want = F.interpolate(x.double(), scale_factor=tuple(float(f) for f in factor), mode="nearest")
    np.testing.assert_array_equal(got, want.to(torch.int64).numpy())
    for y in range(3 * factor[0]):
        for xx in range(5 * factor[1]):
            np.testing.assert_array_equal(got[:, :, y, xx], x[:, :, y // factor[0], xx // factor[1]].numpy())


# --- matching: the spellings real models use ---------------------------------------------------

def _method_shuffle(x, g):
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)


def _reshape_shuffle(x, g):
    n, c, h, w = x.size()
    return torch.reshape(torch.transpose(x.reshape(n, g, -1, h, w), 2, 1), (n, c, h, w))


@pytest.mark.parametrize("spelling", [channel_shuffle, _method_shuffle, _reshape_shuffle])
@pytest.mark.parametrize("groups", [2, 4])
def test_channel_shuffle_spellings_are_one_shuffle_op(spelling, groups):
    ops, ql = ops_of(Net(lambda m, x: spelling(x, groups)), "shuffle")
    assert [op["groups"] for op in ops] == [groups] and ops[0]["shape"] == [8, 8, 8]
    src = ql[ops[0]["inputs"][0]]
    assert [ops[0][k] for k in ("scale", "zero_point", "qmin", "qmax")] == [src[k] for k in ("scale", "zero_point",
                                                                                              "qmin", "qmax")]


SPLITS = {
    "chunk_method": (lambda m, x: (lambda c: torch.cat([c[1], c[0]], 1))(x.chunk(2, dim=1)), [(4, 4), (0, 4)]),
    "torch_chunk": (lambda m, x: torch.cat([torch.chunk(x, 2, 1)[1], x], 1), [(4, 4)]),
    "split_sizes": (lambda m, x: torch.cat([x.split([3, 5], dim=1)[1], x.split(3, dim=1)[2]], 1), [(3, 5), (6, 2)]),
    "torch_split": (lambda m, x: (lambda c: torch.cat([c[1], c[0]], 1))(torch.split(x, 4, dim=1)), [(4, 4), (0, 4)]),
    "slicing": (lambda m, x: torch.cat([x[:, 2:6], x[:, -4:], x[:, :]], 1), [(2, 4), (4, 4), (0, 8)]),
    "computed": (lambda m, x: torch.cat([x[:, : x.size(1) // 2], x[..., 4:, :, :]], 1), [(0, 4), (4, 4)]),
    "unused_piece": (lambda m, x: torch.cat([x.chunk(2, dim=1)[0], x], 1), [(0, 4)]),
}


@pytest.mark.parametrize("name", list(SPLITS))
def test_channel_split_spellings_are_slice_ops(name):
    fn, want = SPLITS[name]
    out_channels = sum(c for _, c in want) + (8 if name in ("torch_chunk", "unused_piece") else 0)
    ops, ql = ops_of(Net(fn, channels=out_channels), "slice")
    assert [(op["channel_start"], op["shape"][0]) for op in ops] == want
    for op in ops:
        src = ql[op["inputs"][0]]
        assert op["shape"][1:] == src["shape"][1:] == [8, 8]
        assert (op["zero_point"], op["qmin"], op["qmax"]) == (src["zero_point"], src["qmin"], src["qmax"])


UPSAMPLES = {
    "module_x2": (lambda m, x: m.up(x), nn.Upsample(scale_factor=2, mode="nearest"), [2, 2]),
    "module_nearest2d": (lambda m, x: m.up(x), nn.UpsamplingNearest2d(scale_factor=3), [3, 3]),
    "module_size": (lambda m, x: m.up(x), nn.Upsample(size=(16, 8)), [2, 1]),
    "interpolate_2_1": (lambda m, x: F.interpolate(x, scale_factor=(2, 1), mode="nearest"), None, [2, 1]),
    "interpolate_size": (lambda m, x: F.interpolate(x, size=(8, 24)), None, [1, 3]),
    "interpolate_computed": (lambda m, x: F.interpolate(x, size=(x.shape[2] * 2, x.shape[3] * 2)), None, [2, 2]),
    "nearest_exact": (lambda m, x: F.interpolate(x, scale_factor=2, mode="nearest-exact"), None, [2, 2]),
}


@pytest.mark.parametrize("name", list(UPSAMPLES))
def test_nearest_upsampling_spellings_are_upsample_ops(name):
    fn, mod, factor = UPSAMPLES[name]
    net = Net(fn)
    if mod is not None:
        net.up = mod
    ops, ql = ops_of(net, "upsample")
    assert [op["factor"] for op in ops] == [factor]
    assert ops[0]["shape"] == [8, 8 * factor[0], 8 * factor[1]]


# --- refusals: one line naming the node -------------------------------------------------------

def test_other_transposes_and_permutes_are_refused():
    msg = refusal(Net(lambda m, x: x.view(x.size(0), 2, 4, 8, 8).transpose(1, 3)))
    assert "unsupported method transpose" in msg and "permutes" in msg and "channel shuffle" in msg
    msg = refusal(Net(lambda m, x: x.view(x.size(0), 8, 64).transpose(1, 2).reshape(x.size(0), 8, 8, 8)))
    assert "at node 'transpose'" in msg and "not a channel shuffle" in msg
    msg = refusal(Net(lambda m, x: x.view(x.size(0), 2, 4, 8, 8).permute(0, 2, 1, 3, 4).reshape(x.size(0), 8, 8, 8)))
    assert "permute" in msg and "permutes" in msg


@pytest.mark.parametrize("fn,node,channels", [
    (lambda m, x: x[:, :, 1:5], "getitem", 8),
    (lambda m, x: x[:, ::2], "getitem", 4),
    (lambda m, x: x[:, 2][:, None], "getitem", 1),
    (lambda m, x: x.chunk(2, dim=2)[0], "getitem", 8),
    (lambda m, x: torch.split(x, 4, dim=3)[1], "getitem", 8),
    (lambda m, x: x[1:], "getitem", 8),
])
def test_slicing_other_than_a_channel_range_is_refused(fn, node, channels):
    msg = refusal(Net(fn, channels))
    assert f"at node '{node}'" in msg and "no range of channels" in msg and "x[:, a:b]" in msg


def test_other_upsampling_modes_and_factors_are_refused():
    msg = refusal(Net(lambda m, x: F.interpolate(x, scale_factor=2, mode="bilinear")))
    assert "unsupported function interpolate" in msg and "mode='bilinear'" in msg and "mode='nearest'" in msg
    net = Net(lambda m, x: m.up(x))
    net.up = nn.UpsamplingBilinear2d(scale_factor=2)
    assert "mode 'bilinear'" in refusal(net)
    msg = refusal(Net(lambda m, x: F.interpolate(x, scale_factor=1.5)))
    assert "not by integer factors" in msg and "8x8x8 to 8x12x12" in msg
    msg = refusal(Net(lambda m, x: F.interpolate(x, size=(4, 4))))
    assert "not by integer factors" in msg


# --- the C engine's load-time rules for the three kinds ----------------------------------------

@pytest.fixture(scope="module")
def movement_export(tmp_path_factory):
    state, quant, images = random_quantized("data_movement", "per_channel", seed=3, n_test=8)
    ex = export_graph(str(tmp_path_factory.mktemp("move")), state, quant, images, 3, mode="bin")
    return ex, quant


def test_data_movement_graph_runs_in_c(binaries, movement_export, tmp_path):  # noqa: F811
    ex, _ = movement_export
    for build, extra in (("asan", []), ("asan", ["--reference"]), ("fast", [])):
        out = str(tmp_path / f"l_{build}_{len(extra)}.txt")
        proc = run(binaries[build], ex, "--logits", out, *extra)
        assert_clean(proc)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(read_logits(out), ex["logits"])


def _first(quant, kind, **fields):
    return next(i for i, op in enumerate(quant) if op["op"] == kind and all(op.get(k) == v for k, v in fields.items()))


@pytest.mark.parametrize("case", ["shuffle_groups", "shuffle_shape", "shuffle_zero_point", "slice_range",
                                  "slice_hw", "slice_clamp", "upsample_size", "upsample_channels",
                                  "upsample_zero_point"])
def test_c_refuses_broken_data_movement_records(binaries, movement_export, tmp_path, case):  # noqa: F811
    base, quant = movement_export
    ex = clone(base, str(tmp_path / "ex"))
    sh, sl, up = _first(quant, "shuffle", groups=4), _first(quant, "slice"), _first(quant, "upsample", factor=[2, 1])
    c_sl = quant[quant[sl]["inputs"][0]]["shape"][0]
    mutation, phrase = {
        "shuffle_groups": (set_field(sh, "groups", 5), "does not divide"),
        "shuffle_shape": (set_field(sh, "H", quant[sh]["shape"][1] - 1), "(shuffle): output"),
        "shuffle_zero_point": (set_field(sh, "zero_point", (quant[sh]["zero_point"] + 1) % 256), "zero point/clamp"),
        "slice_range": (set_field(sl, "channel_start", c_sl - quant[sl]["shape"][0] + 1), "(slice): channels"),
        "slice_hw": (set_field(sl, "W", quant[sl]["shape"][2] + 1), "(slice): output"),
        "slice_clamp": (set_field(sl, "qmax", quant[sl]["qmax"] - 1), "zero point/clamp"),
        "upsample_size": (set_field(up, "scale_w", 2), "(upsample): output"),
        "upsample_channels": (set_field(up, "C", quant[up]["shape"][0] - 1), "(upsample): output"),
        "upsample_zero_point": (set_field(up, "zero_point", (quant[up]["zero_point"] + 1) % 256), "zero point/clamp"),
    }[case]
    mutate_model(ex, mutation)
    assert phrase in refused(binaries["asan"], ex, "bin", "model.bin", tmp_path)
