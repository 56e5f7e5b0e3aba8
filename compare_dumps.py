"""Compare two golden-vector dumps (test_model.py --dump_layers, c/inference --dump-layers).

    python compare_dumps.py A B [--ignore_names]

Reads both folders' manifest.json and .npy files (the layout is in model/formats/golden.py). The manifests
must describe the same images and ops (index, name, kind, inputs, shape, zero point, clamp, scale
at float32 precision); else one line naming the first mismatch. Then the ops are compared in
execution order, each image in turn, each in C,H,W order, and the FIRST differing value is reported
on one line: op index and name, image, flat C,H,W index and (c, y, x), both values.

Exit codes: 0 "identical: N images, K ops"; 1 a difference or a manifest mismatch (one line);
2 a folder that is not a readable dump (one `error:` line).
"""
import argparse
import sys

from model.formats import golden


def main(argv=None):
    parser = argparse.ArgumentParser(prog="compare_dumps.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", metavar="A", help="a dump folder (manifest.json, op*.npy, op*.hex)")
    parser.add_argument("b", metavar="B", help="the dump folder to compare it with")
    parser.add_argument("--ignore_names", "--ignore-names", action="store_true",
                        help="do not require the ops' names to agree (an engine that has no op names)")
    args = parser.parse_args(argv)
    try:
        manifest_a, values_a = golden.read_dump(args.a)
        manifest_b, values_b = golden.read_dump(args.b)
    except golden.DumpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    mismatch = golden.manifest_mismatch(manifest_a, manifest_b, names=not args.ignore_names)
    if mismatch:
        print(f"{mismatch} (A = {args.a}, B = {args.b})")
        return 1
    d = golden.first_difference(manifest_a, values_a, values_b)
    if d is None:
        print(f"identical: {manifest_a['images']} images, {len(manifest_a['ops'])} ops")
        return 0
    print(f"first difference: op {d['op']} ({d['name']}, {d['kind']}), image {d['image']}, index {d['index']} "
          f"(c={d['c']}, y={d['y']}, x={d['x']}): A={d['a']} B={d['b']} "
          f"({d['count']} {'value differs' if d['count'] == 1 else 'values differ'} in this op; "
          f"A = {args.a}, B = {args.b})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
