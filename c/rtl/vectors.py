"""Test vectors for c/rtl/requantize.v from a real LeNet layer (make -C c rtl-test).

    vectors.py BUILD_DIR [IMAGES]

For the first IMAGES MNIST test images (default 3) through quantization/lenet_quant.tuple, every
output of its first conv (features_0, 6x28x28 a image) and of its first linear layer
(classifier_0, 120): the int32 accumulator (the numpy specification's, taken with multiplier 1,
shift 0, zero point 0 and no clamp), that channel's multiplier and shift, the output's zero point
and clamp, and the value the engines produce (the layer's golden output).  Then 4,096 vectors at
the contract's edges that a real layer rarely reaches: accumulators from -2^31 to 2^31 - 1,
multipliers up to 2^31 - 1, shifts 0..62, zero points and clamps anywhere in 0..255 (the zero
point outside the clamp too), the expected value from model/qmath.py's requantize.  Writes
BUILD_DIR/vectors.hex (requantize_tb.v's format) and BUILD_DIR/count.  Also BUILD_DIR/pairs.hex and
BUILD_DIR/pair_count: 4,096 residual adds (the contract's add, for requant_serial.v's pairs), each
two words of that format, a - z_a with m_a then b - z_b with m_b, one shift, zero point and clamp, the
expected value in the second.
"""
import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
LAYERS = ("features_0", "classifier_0")
WIDE = 1 << 40


def _word(acc, m, shift, zp, qmin, qmax, out):
    return (f"{(acc & 0xFFFFFFFF) << 96 | m << 64 | shift << 56 | zp << 48 | qmin << 40 | qmax << 32 | out << 24:032x}")


def edge_vectors(count, seed=0):
    """(acc, m, shift, zp, qmin, qmax, expected) at the contract's extremes, seeded."""
    import numpy as np

    from model import qmath
    rng = np.random.default_rng(seed)
    accs = [-2 ** 31, 2 ** 31 - 1, -1, 0, 1]
    vectors = []
    for k in range(count):
        acc = accs[k % len(accs)] if k < 3 * len(accs) else int(rng.integers(-2 ** 31, 2 ** 31))
        m = [2 ** 31 - 1, 1, 0][k % 3] if k < 3 * len(accs) else int(rng.integers(0, 2 ** 31))
        shift = int(rng.integers(0, 63)) if k % 7 else [0, 62, 31][k % 3]
        qmin, qmax = sorted(int(v) for v in rng.integers(0, 256, 2))
        zp = int(rng.integers(0, 256))
        out = int(qmath.requantize(np.array([acc]), np.array([m]), np.array([shift]), zp, qmin, qmax)[0])
        vectors.append((acc, m, shift, zp, qmin, qmax, out))
    return vectors


def pair_vectors(count, seed=1):
    """(a, m_a, b, m_b, shift, zp, qmin, qmax, expected): the contract's add,
    clamp(zp + rshift_round(a*m_a + b*m_b, shift), qmin, qmax), a and b in -255..255 (x - z), seeded."""
    import numpy as np

    from model import qmath
    rng = np.random.default_rng(seed)
    vectors = []
    for k in range(count):
        a, b = (int(v) for v in rng.integers(-255, 256, 2)) if k >= 4 else ([255, -255][k % 2], [255, -255][k // 2])
        m_a, m_b = (int(v) for v in rng.integers(0, 2 ** 31, 2)) if k % 5 else (2 ** 31 - 1, 2 ** 31 - 1)
        shift = int(rng.integers(0, 63)) if k % 7 else int(rng.integers(28, 40))
        qmin, qmax = sorted(int(v) for v in rng.integers(0, 256, 2))
        zp = int(rng.integers(0, 256))
        out = int(np.clip(zp + qmath.rshift_round(a * m_a + b * m_b, shift), qmin, qmax))
        vectors.append((a, m_a, b, m_b, shift, zp, qmin, qmax, out))
    return vectors


def main(build, count):
    import numpy as np
    import torch

    import config
    from data import datasets
    from model.formats.golden import layer_outputs
    from model.graph import Graph
    from model.ops import KINDS

    state, quant = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    images, _ = datasets.load("mnist", "test", *config.dataset_dirs(ROOT))
    outs = layer_outputs(state, quant, images[:count])
    words = []
    for i, op in enumerate(quant):
        if op["name"] not in LAYERS:
            continue
        p = {k: state[f"{op['name']}.{k}"].numpy() for k in ("weight", "bias", "multiplier", "shift")}
        src = op["inputs"][0]
        spec = dataclasses.replace(Graph.from_tuple({}, quant).ops[i], zero_point=0, qmin=-WIDE, qmax=WIDE)
        ones = dict(p, multiplier=np.ones_like(p["multiplier"]), shift=np.zeros_like(p["shift"]))
        acc = np.asarray(KINDS[op["op"]].numpy([outs[src].astype(np.int64)], spec, ones)).reshape(outs[i].shape)
        assert np.abs(acc).max() < 2 ** 31
        mult, shift = p["multiplier"], p["shift"]
        for n, c, y, x in np.ndindex(acc.shape):
            words.append(_word(int(acc[n, c, y, x]), int(mult[c]), int(shift[c]), op["zero_point"], op["qmin"],
                               op["qmax"], int(outs[i][n, c, y, x])))
    words += [_word(*v) for v in edge_vectors(4096)]
    os.makedirs(build, exist_ok=True)
    with open(os.path.join(build, "vectors.hex"), "w") as f:
        f.write("\n".join(words) + "\n")
    with open(os.path.join(build, "count"), "w") as f:
        f.write(f"{len(words)}\n")
    pairs = [w for a, m_a, b, m_b, shift, zp, qmin, qmax, out in pair_vectors(4096)
             for w in (_word(a, m_a, shift, zp, qmin, qmax, 0), _word(b, m_b, shift, zp, qmin, qmax, out))]
    with open(os.path.join(build, "pairs.hex"), "w") as f:
        f.write("\n".join(pairs) + "\n")
    with open(os.path.join(build, "pair_count"), "w") as f:
        f.write(f"{len(pairs)}\n")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 3)
