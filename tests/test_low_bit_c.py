"""The C engine on weights of 2 to 8 bits per layer (docs/contract.md "weight.bin"): model.bin v4's
weight_bits, each layer's weights packed in weight.bin, and version 3 files still read.

- random awkward graphs (tests/kernel_models.py: every conv path of the optimized kernels) quantized at
  8, 6, 4, 3 and 2 bits, per channel and per tensor, at mixed widths, and with 4-bit weights and
  activations: the optimized kernels (the CPU's pick, --isa avx2, --isa c99), the reference kernels,
  weight.txt and the ASan/UBSan build all give the numpy engine's logits;
- a version 3 model.bin (a v4 one less the conv and linear records' weight_bits word) gives the same
  logits as its v4 original, in both weight formats;
- hostile files are refused in one line, the sanitizers quiet: weight_bits 1 or 9, widths the weight
  files do not follow, a per-channel code -2^(b-1), non-zero padding bits, a per-tensor zero point
  above 2^b-1, weight.bin a byte short, weight.txt values outside the layer's bits.
"""
import os
import re
import struct

import pytest

from model.formats import export_format as ef
from tests.c_builds import check_engines, missing_flags
from tests.c_engine import clone, export_graph, file_of, mutate_model, put_word, refused, reseal, set_field
from tests.kernel_models import ARCHS
from tests.random_models import random_quantized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = (8, 6, 4, 3, 2)
MODES = ("per_channel", "per_tensor")


def low_bit_export(folder, arch, mode, seed=7, **widths):
    state, quant, images = random_quantized(arch, mode, seed, archs=ARCHS, n_test=24, **widths)
    return export_graph(folder, state, quant, images, seed, mode="both")


def engine_runs():
    """(build, extra arguments) of every kernel set: the CPU's pick, AVX2 where the CPU has it, C99, the
    reference kernels, weight.txt, and the sanitized build on both kernel sets"""
    isas = [["--isa", "avx2"]] if not missing_flags("avx2") else []
    return [("native", []), *[("native", isa) for isa in isas], ("native", ["--isa", "c99"]),
            ("native", ["--reference"]), ("native", ["--format", "txt"]), ("asan", []),
            ("asan", ["--reference", "--format", "txt"])]


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("mode", MODES)
def test_every_kernel_set_equals_numpy(builds, tmp_path, mode, bits):
    ex = low_bit_export(str(tmp_path / "ex"), "awkward", mode, weight_bits=bits)
    check_engines(builds, tmp_path, ex, engine_runs())


def test_mixed_widths_equal_numpy(builds, tmp_path):
    """Each layer its own width, 2 to 8 in turn: layers start where packed ones of other widths end."""
    _, quant, _ = random_quantized("awkward", "per_channel", 7, archs=ARCHS, n_test=1)
    layers = [op["name"] for op in quant if op["op"] in ("conv", "linear")]
    bits = {name: {"weight_bits": 2 + k % 7} for k, name in enumerate(layers)}
    ex = low_bit_export(str(tmp_path / "ex"), "awkward", "per_channel", bits=bits)
    _, ops = ef.read_model_bin(file_of(ex, "model.bin"))
    assert [op["weight_bits"] for op in ops if op["op"] in ("conv", "linear")] == [2 + k % 7 for k in range(len(layers))]
    check_engines(builds, tmp_path, ex, engine_runs())


@pytest.mark.parametrize("mode", MODES)
def test_4_bit_activations_equal_numpy(builds, tmp_path, mode):
    """W4A4: every activation but the input's and the logits' in 0..15 (clamps the kernels keep)"""
    ex = low_bit_export(str(tmp_path / "ex"), "awkward", mode, weight_bits=4, act_bits=4)
    _, ops = ef.read_model_bin(file_of(ex, "model.bin"))
    assert max(op["qmax"] for op in ops[1:-1]) <= 15
    check_engines(builds, tmp_path, ex, engine_runs())


def test_format_versions_agree_with_python():
    """c/core/fpgai.h writes no model.bin but reads what model/formats/export_format.py writes and reads"""
    header = open(os.path.join(ROOT, "c", "core", "fpgai.h")).read()
    define = lambda name: int(re.search(rf"^#define {name}\s+(\d+)", header, re.M).group(1))
    assert define("FORMAT_VERSION") == ef.MODEL_BIN_VERSION == max(ef.READ_VERSIONS)
    assert define("OLDEST_FORMAT_VERSION") == min(ef.READ_VERSIONS)


def as_version_3(export):
    """model.bin rewritten as version 3: each conv and linear record less its last parameter word,
    weight_bits (every layer then reads as 8 bits), its n_words one less; sealed again."""
    def strip(data, records):
        for rec in reversed(records):
            if "weight_bits" in rec:
                del data[rec["weight_bits"]:rec["weight_bits"] + 4]
                put_word(data, rec["n_words"], struct.unpack_from("<i", data, rec["n_words"])[0] - 1)
        put_word(data, 8, 3)
    mutate_model(export, strip)


def test_a_version_3_model_bin_gives_the_same_logits(builds, tmp_path):
    ex = low_bit_export(str(tmp_path / "v4"), "tiny_mnist", "per_tensor")
    v3 = clone(ex, str(tmp_path / "v3"))
    as_version_3(v3)
    data = open(file_of(v3, "model.bin"), "rb").read()
    assert struct.unpack_from("<I", data, 8)[0] == 3 and len(data) < os.path.getsize(file_of(ex, "model.bin"))
    header, ops = ef.read_model_bin(file_of(v3, "model.bin"))
    assert header["version"] == 3 and all(op["weight_bits"] == 8 for op in ops if op["op"] in ("conv", "linear"))
    check_engines(builds, tmp_path, v3, [("asan", []), ("asan", ["--reference"]), ("native", ["--format", "txt"])])


# --- hostile files: one line, exit 1, no sanitizer report -----------------------------------

@pytest.fixture(scope="module")
def hostile_exports(tmp_path_factory):
    """tiny_mnist (a 7x1x5x5 conv: 175 weights, so 3 bits leave padding bits in its last byte) at 4 and
    3 bits, per channel and per tensor"""
    cache = {}

    def get(mode, bits):
        if (mode, bits) not in cache:
            folder = str(tmp_path_factory.mktemp(f"{mode}{bits}"))
            cache[mode, bits] = low_bit_export(folder, "tiny_mnist", mode, weight_bits=bits)
        return cache[mode, bits]
    return get


def edit_weight_bin(export, fn):
    path = file_of(export, "weight.bin")
    data = bytearray(open(path, "rb").read())
    fn(data)
    open(path, "wb").write(bytes(data))
    reseal(export)


def edit_weight_txt(export, fn):
    path = file_of(export, "weight.txt")
    lines = open(path).read().split("\n")
    fn(lines)
    open(path, "w").write("\n".join(lines))
    reseal(export)


def first_value(value):
    """weight.txt edit: the first weight of the first layer (line 2) becomes `value`"""
    return lambda lines: lines.__setitem__(1, f"{value}," + lines[1].split(",", 1)[1])


def padding_bit(data):
    """The first bit after the first layer's last 3-bit value (175 values: 525 bits, 3 of padding)"""
    data[525 // 8] |= 1 << (525 % 8)


HOSTILE = [
    # (name, mode, bits, mutation, format, what the line names, phrase)
    ("weight_bits_1", "per_channel", 4, lambda e: mutate_model(e, set_field(1, "weight_bits", 1)), "bin",
     "model.bin", "weight_bits = 1 outside [2, 8]"),
    ("weight_bits_9", "per_channel", 4, lambda e: mutate_model(e, set_field(1, "weight_bits", 9)), "bin",
     "model.bin", "weight_bits = 9 outside [2, 8]"),
    ("width_the_files_do_not_follow", "per_channel", 4, lambda e: mutate_model(e, set_field(1, "weight_bits", 8)),
     "bin", "model.bin", "tile the weight and bias files"),
    ("code_minus_8_at_4_bits", "per_channel", 4, lambda e: edit_weight_bin(e, lambda d: d.__setitem__(0, d[0] & 0xF0 | 0x8)),
     "bin", "weight.bin", "weight 0 (output channel 0) is -8; per-channel weights of 4 bits lie in [-7, 7]"),
    ("code_minus_4_at_3_bits", "per_channel", 3, lambda e: edit_weight_bin(e, lambda d: d.__setitem__(0, d[0] & 0xF8 | 0x4)),
     "bin", "weight.bin", "is -4; per-channel weights of 3 bits lie in [-3, 3]"),
    ("padding_bits", "per_channel", 3, lambda e: edit_weight_bin(e, padding_bit), "bin", "weight.bin",
     "padding bits after its last 3-bit weight are not 0"),
    ("zero_point_16_at_4_bits", "per_tensor", 4, lambda e: mutate_model(e, set_field(1, "weight_zero_point", 16)),
     "bin", "model.bin", "weight_zero_point 16 does not fit its 4-bit weights (0..15)"),
    ("weight_bin_a_byte_short", "per_channel", 4, lambda e: edit_weight_bin(e, lambda d: d.pop()), "bin",
     "model.bin", "weight bytes, but records a weight.bin of"),
    ("weight_bin_a_byte_short_unsealed", "per_channel", 4,
     lambda e: open(file_of(e, "weight.bin"), "r+b").truncate(os.path.getsize(file_of(e, "weight.bin")) - 1), "bin",
     "weight.bin", "model.bin recorded"),
    ("txt_8_at_4_bits", "per_channel", 4, lambda e: edit_weight_txt(e, first_value(8)), "txt", "weight.txt:2",
     "weight 8 outside [-7, 7]"),
    ("txt_minus_8_at_4_bits", "per_channel", 4, lambda e: edit_weight_txt(e, first_value(-8)), "txt", "weight.txt:2",
     "weight -8 outside [-7, 7]"),
    ("txt_16_at_4_bits_per_tensor", "per_tensor", 4, lambda e: edit_weight_txt(e, first_value(16)), "txt",
     "weight.txt:2", "weight 16 outside [0, 15]"),
]


@pytest.mark.parametrize("name,mode,bits,mutate,fmt,file_part,phrase", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_low_bit_files_are_refused(builds, hostile_exports, tmp_path, name, mode, bits, mutate, fmt,
                                           file_part, phrase):
    ex = clone(hostile_exports(mode, bits), str(tmp_path / "ex"))
    _, ops = ef.read_model_bin(file_of(ex, "model.bin"))
    assert ops[1]["op"] == "conv" and ops[1]["weight_bits"] == bits     # the layer the mutations edit
    mutate(ex)
    assert phrase in refused(builds["asan"], ex, fmt, file_part, tmp_path)
