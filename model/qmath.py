"""The integer arithmetic contract: the one rounding rule and the requantizer.

Rounding, everywhere (engines, quantizer, exporter): round half toward +inf.
  float -> int:        round_half_up(x)      = floor(x + 0.5)
  int >> s (s >= 0):   rshift_round(x, s)    = floor((x + 2^(s-1)) / 2^s)   (x unchanged for s = 0)
An adder and an arithmetic shift: the cheapest correct rounding in hardware.

Requantization of an int32 accumulator to an 8-bit activation:
  out = clamp(z_out + rshift_round(acc * m, shift), qmin, qmax)
with the real multiplier M = s_in * s_w / s_out held as m / 2^shift,
m < 2^(bits-1); acc * m is evaluated in 64 bits.
"""
import math

import numpy as np

MAX_SHIFT = 62          # acc * m + 2^(shift-1) must stay inside int64


def round_half_up(x):
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def rshift_round(x, shift):
    """Integer x (any int64 array) times 2^-shift, rounded half up. Shift broadcasts."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    return (x + ((np.int64(1) << shift) >> 1)) >> shift


def quantize_multiplier(real, bits):
    """(m, shift) with m / 2^shift the closest such value to `real` >= 0 and
    0 <= m < 2^(bits-1); relative error |m/2^shift - real| / real <= 2^-(bits-1)
    (m is normalised into [2^(bits-2), 2^(bits-1)) unless the shift limit is hit)."""
    if not 8 <= bits <= 32:
        raise ValueError(f"multiplier bits {bits} outside [8, 32]")
    if real < 0 or not math.isfinite(real):
        raise ValueError(f"requantization multiplier {real} must be finite and >= 0")
    if real == 0:
        return 0, 0
    frac, exp = math.frexp(real)                  # real = frac * 2^exp, frac in [0.5, 1)
    m = int(round_half_up(frac * (1 << (bits - 1))))
    shift = bits - 1 - exp
    if m == 1 << (bits - 1):                      # rounding carried into the next power of two
        m //= 2
        shift -= 1
    if shift < 0:
        raise ValueError(f"requantization multiplier {real} too large for {bits}-bit m")
    if shift > MAX_SHIFT:                         # tiny multiplier: fewer significant bits
        m = int(round_half_up(real * 2.0 ** MAX_SHIFT))
        shift = MAX_SHIFT
    return m, shift


def requantize(acc, m, shift, zero_point, qmin, qmax):
    """The requantizer of the contract; m and shift broadcast (per channel along axis 1)."""
    out = zero_point + rshift_round(np.asarray(acc, dtype=np.int64) * np.asarray(m, dtype=np.int64), shift)
    return np.clip(out, qmin, qmax)


def choose_qparams(lo, hi, qmin=0, qmax=255):
    """Asymmetric (scale, zero_point) covering [lo, hi] and always 0, which is then exact."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi == lo:
        return 1.0, int(qmin if lo == 0 else qmax)
    scale = (hi - lo) / (qmax - qmin)
    zero_point = int(np.clip(round_half_up(qmin - lo / scale), qmin, qmax))
    return scale, zero_point
