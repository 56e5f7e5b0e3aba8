"""The arithmetic contract: one rounding rule, multipliers within their error bound."""
import math

import numpy as np
import pytest

from model import qmath


def test_round_half_up_on_ties_and_negatives():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -0.49, 0.49, -1.51])
    assert qmath.round_half_up(x).tolist() == [-2, -1, 0, 1, 2, 3, 0, 0, -2]


def test_rshift_round_matches_the_float_definition():
    rng = np.random.default_rng(0)
    x = rng.integers(-2 ** 40, 2 ** 40, size=20000)
    for s in (0, 1, 2, 7, 15, 31):
        expected = np.floor(x.astype(object) / (2 ** s) + 0.5 if s else x.astype(object))
        got = qmath.rshift_round(x, s)
        # exact reference in Python integers: floor((x + 2^(s-1)) / 2^s)
        exact = [(int(v) + ((1 << s) >> 1)) // (1 << s) for v in x]
        assert got.tolist() == exact
        assert got.tolist() == [int(e) for e in expected]


def test_rshift_round_ties_go_up_also_for_negatives():
    assert qmath.rshift_round([-6, -5, -3, -1, 1, 3, 5, 6], 1).tolist() == [-3, -2, -1, 0, 1, 2, 3, 3]
    assert qmath.rshift_round([-2, 2, -6, 6], 2).tolist() == [0, 1, -1, 2]


@pytest.mark.parametrize("bits", [8, 12, 16, 24, 31, 32])
def test_multiplier_within_stated_relative_error(bits):
    rng = np.random.default_rng(bits)
    for real in np.exp(rng.uniform(math.log(1e-6), math.log(100.0), size=2000)):
        m, shift = qmath.quantize_multiplier(float(real), bits)
        assert 0 <= m < 2 ** (bits - 1) and 0 <= shift <= qmath.MAX_SHIFT
        assert abs(m / 2 ** shift - real) <= real * 2.0 ** -(bits - 1)
        assert m >= 2 ** (bits - 2)                   # normalised: full precision used


def test_multiplier_edge_cases():
    assert qmath.quantize_multiplier(0.0, 16) == (0, 0)
    m, s = qmath.quantize_multiplier(0.99999999, 16)  # rounds up to 1.0: carried into the next power
    assert m / 2 ** s == 1.0 and m < 2 ** 15
    m, s = qmath.quantize_multiplier(1e-30, 16)       # below the shift range: fewer significant bits
    assert s == qmath.MAX_SHIFT
    with pytest.raises(ValueError):
        qmath.quantize_multiplier(-1.0, 16)
    with pytest.raises(ValueError):
        qmath.quantize_multiplier(2.0 ** 20, 16)


def test_requantize_per_channel_and_clamp():
    acc = np.array([[1000, -1000], [3, 200000]])
    m = np.array([[1 << 14, 3 << 13]])                # 0.5 and 0.75 at shift 15
    out = qmath.requantize(acc, m, 15, zero_point=10, qmin=0, qmax=255)
    assert out.tolist() == [[255, 0], [12, 255]]      # 10+500 -> 255; 10-750 -> 0; 10+round(1.5)=12


def test_choose_qparams_keeps_zero_exact():
    for lo, hi in [(0.0, 6.0), (-1.0, 3.0), (0.5, 2.0), (-3.0, -1.0)]:
        scale, zp = qmath.choose_qparams(lo, hi)
        assert 0 <= zp <= 255
        assert min(lo, 0) >= scale * (0 - zp) - scale / 2 and max(hi, 0) <= scale * (255 - zp) + scale / 2
    assert qmath.choose_qparams(0.0, 6.0) == (6.0 / 255, 0)
