"""The op table is declared once per language: model/ops (Python) and the C engine's table
(`c/inference --op-table`). They must describe the same model.bin records."""
import json
import subprocess

from model.ops import KINDS


def test_c_and_python_op_tables_agree(binaries):  # noqa: F811
    proc = subprocess.run([binaries["fast"], "--op-table"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    c_table = {row["kind"]: row for row in map(json.loads, proc.stdout.splitlines())}
    py_table = {k.name: {"code": k.code, "kind": k.name, "min_inputs": k.inputs[0], "max_inputs": k.inputs[1],
                         "params": list(k.params), "n_mult": k.n_mult, "n_shift": k.n_shift, "n_table": k.n_table}
                for k in KINDS.values()}
    assert c_table == py_table

