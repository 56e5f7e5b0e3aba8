"""The documentation: README.md and docs/*.md.

- every generated table and figure equals what docs/tables.py makes from the results files
  (`python docs/tables.py --check` on the real files), and the check fails, naming the file and the
  table, when a results number changes (on a copy of the checkout);
- README.md is a map of at most 300 lines;
- every relative link in README.md and docs/*.md points at a file that exists and, with `#anchor`,
  at a heading of that file (GitHub's anchors).
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = os.path.join(ROOT, "docs", "tables.py")
DOCS = [os.path.join(ROOT, "README.md")] + sorted(
    os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))


def tables(*args):
    return subprocess.run([sys.executable, TABLES, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the documentation and the results files (the big read-only inputs linked)."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copy(os.path.join(ROOT, "README.md"), root)
    for folder in ("docs", "results", os.path.join("benchmarks", "results")):
        shutil.copytree(os.path.join(ROOT, folder), root / folder)
    for folder in ("pretrained", "export_model"):
        os.symlink(os.path.join(ROOT, folder), root / folder)
    return root


def fresh_copy(checkout, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(checkout, root, symlinks=True)
    return root


def test_tables_equal_their_results_files():
    proc = tables("--check")
    assert proc.returncode == 0, "docs differ from the results files; run `make docs`:\n" + proc.stdout + proc.stderr


def test_check_names_the_file_and_table_of_a_changed_result(checkout, tmp_path):
    root = fresh_copy(checkout, tmp_path)
    assert tables("--check", "--root", str(root)).returncode == 0
    path = root / "results" / "lenet_per_channel.json"
    report = json.loads(path.read_text())
    report["accuracy"]["c_int8"] = 0.9912                   # a results number changed
    path.write_text(json.dumps(report))
    proc = tables("--check", "--root", str(root))
    assert proc.returncode == 1
    assert "README.md: table 'accuracy' differs" in proc.stdout
    assert os.path.join("docs", "results.md") + ": table 'accuracy' differs" in proc.stdout
    assert "table 'speed_summary'" not in proc.stdout       # only what reads that file
    before = (root / "README.md").read_text()
    assert "99.12%" not in before
    assert tables("--root", str(root)).returncode == 0      # make docs: rewritten ...
    after = (root / "README.md").read_text()
    assert "99.12%" in after
    assert tables("--check", "--root", str(root)).returncode == 0   # ... and the check passes again
    # only the generated parts changed
    strip = re.compile(r"<!-- table:(\w+) -->\n.*?<!-- /table -->", re.S)
    assert strip.sub("", before) == strip.sub("", after)


def test_the_peer_table_compares_the_same_test_images(checkout, tmp_path):
    """A Brevitas row on the first 2,000 test images stands beside FPGAI's accuracy there (peer_work),
    one on all 10,000 beside its full test."""
    root = fresh_copy(checkout, tmp_path)
    path = root / "results" / "low_bit" / "resnet18_w4a8.json"
    result = json.loads(path.read_text())
    result["peer_work"]["c_int8"], result["test"]["accuracy"]["c_int8"] = 0.9222, 0.9111
    path.write_text(json.dumps(result))
    assert tables("--root", str(root)).returncode == 0
    section = (root / "docs" / "results.md").read_text().split("<!-- table:low_bit_peer -->")[1]
    rows = [line for line in section.split("<!-- /table -->")[0].splitlines() if line.startswith("| resnet18 | W4A8 |")]
    assert [row.split(" | ")[2] for row in rows] == ["2,000", "10,000"]
    assert rows[0].endswith("| 92.22 (-0.68) |") and rows[1].endswith("| 91.11 (-1.45) |"), rows


def test_check_catches_a_changed_benchmark(checkout, tmp_path):
    root = fresh_copy(checkout, tmp_path)
    path = root / "benchmarks" / "results" / "resnet18.json"
    bench = json.loads(path.read_text())
    bench["batch32_threads2"]["images_per_s"]["c_int8"] += 1000
    path.write_text(json.dumps(bench))
    proc = tables("--check", "--root", str(root))
    assert proc.returncode == 1
    assert os.path.join("docs", "speed.md") + ": table 'bench_cells' differs" in proc.stdout
    assert "README.md: table 'speed_summary' differs" in proc.stdout


def test_timings_from_results_timings_json(checkout, tmp_path):
    """results/timings.json (its schema: cpu, date, timings of command / condition / seconds) fills
    the quick start's table; a fixture here, whether or not the real file exists yet."""
    root = fresh_copy(checkout, tmp_path)
    fixture = {"cpu": "AMD EPYC (Zen 4), 2 cores", "date": "2026-12-06",
               "timings": [{"command": "make demo", "condition": "fresh clone, .venv included", "seconds": 171.4},
                           {"command": "make test-fast", "condition": ".venv built", "seconds": 58.2}]}
    (root / "results" / "timings.json").write_text(json.dumps(fixture))
    proc = tables("--check", "--root", str(root))
    assert proc.returncode == 1 and "README.md: table 'timings' differs" in proc.stdout
    assert tables("--root", str(root)).returncode == 0
    readme = (root / "README.md").read_text()
    assert "| `make demo` | fresh clone, .venv included | 2 min 51 s |" in readme
    assert "| `make test-fast` | .venv built | 58 s |" in readme
    assert "AMD EPYC (Zen 4), 2 cores" in readme
    assert "AMD EPYC (Zen 4), 2 cores" in (root / "docs" / "testing.md").read_text()


def test_unknown_table_is_an_error(checkout, tmp_path):
    root = fresh_copy(checkout, tmp_path)
    with open(root / "docs" / "speed.md", "a") as f:
        f.write("\n<!-- table:no_such_table -->\n<!-- /table -->\n")
    proc = tables("--check", "--root", str(root))
    assert proc.returncode == 1 and "unknown table 'no_such_table'" in proc.stderr


def test_readme_is_at_most_300_lines():
    with open(os.path.join(ROOT, "README.md")) as f:
        lines = f.read().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines"


FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def prose_lines(path):
    """The lines of a markdown file outside fenced code blocks, and outside `code spans`."""
    inside = False
    with open(path) as f:
        for line in f:
            if FENCE.match(line.lstrip()):
                inside = not inside
                continue
            if not inside:
                yield re.sub(r"`[^`]*`", "", line)


def raw_headings(path):
    """Headings with their code spans kept (the slug keeps a code span's text)."""
    inside, out = False, []
    with open(path) as f:
        for line in f:
            if FENCE.match(line.lstrip()):
                inside = not inside
            elif not inside and re.match(r"^#{1,6}\s", line):
                out.append(line)
    return out


def heading_anchors(path):
    seen, result = {}, set()
    for line in raw_headings(path):
        text = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line).group(1)
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        result.add(slug if n == 0 else f"{slug}-{n}")
    return result


def test_the_anchor_rule():
    assert re.sub(r"[^\w\- ]", "", "the --logits file").replace(" ", "-") == "the---logits-file"
    assert re.sub(r"[^\w\- ]", "", "avx2 against torch's avx2 kernels").replace(" ", "-") == \
        "avx2-against-torchs-avx2-kernels"


@pytest.mark.parametrize("path", DOCS, ids=[os.path.relpath(p, ROOT) for p in DOCS])
def test_relative_links_point_at_files_and_headings(path):
    bad = []
    for line in prose_lines(path):
        for m in LINK.finditer(line):
            target = m.group(1) or m.group(2)
            if re.match(r"^[a-z]+:", target):            # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(dest):
                bad.append(f"{target}: no file {os.path.relpath(dest, ROOT)}")
            elif anchor and (not dest.endswith(".md") or anchor not in heading_anchors(dest)):
                bad.append(f"{target}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}")
    assert not bad, f"{os.path.relpath(path, ROOT)}: " + "; ".join(bad)
