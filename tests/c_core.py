"""The C core library as firmware takes it, built for the tests (not a test module): its sources
(c/core, c/ops), compiled alone into one object, and c/mcu/host_check.c built with it and an
EXPORT_MODE=c export, then run on raw images."""
import glob
import os
import subprocess

from model.formats.export_format import c_identifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "c")


def core_sources():
    """The core library's sources (every .c of c/core and c/ops), once `make -C c kinds` wrote the
    kinds' list they include (c/build/fpgai_kinds.h)."""
    proc = subprocess.run(["make", "-C", C_DIR, "kinds"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sorted(glob.glob(os.path.join(C_DIR, "core", "*.c")) + glob.glob(os.path.join(C_DIR, "ops", "*.c")))


CORE_INCLUDES = ["-I", os.path.join(C_DIR, "core"), "-I", os.path.join(C_DIR, "build")]


def core_object(cc, ld, flags, folder):
    """The core compiled alone (each source with cc and flags), linked into one relocatable object:
    its undefined symbols are what the core calls outside itself."""
    objects = []
    for src in core_sources():
        obj = os.path.join(folder, os.path.basename(os.path.dirname(src)) + "_" + os.path.basename(src)[:-2] + ".o")
        subprocess.run([cc, *flags, *CORE_INCLUDES, "-c", src, "-o", obj], check=True, capture_output=True)
        objects.append(obj)
    subprocess.run([ld, "-r", "-o", os.path.join(folder, "core.o"), *objects], check=True)
    return os.path.join(folder, "core.o")


def build_host_check(export_dir, model, out):
    """c/mcu/host_check.c compiled with the core and the EXPORT_MODE=c files of `model` in export_dir."""
    ident = c_identifier(model)
    subprocess.run(["gcc", "-std=c99", "-O3", "-Wall", "-Wextra", "-Werror", *CORE_INCLUDES, "-I", export_dir,
                    f'-DMODEL_H="{model}_model.h"', f"-DPREFIX={ident.lower()}_", f"-DUPREFIX={ident.upper()}_",
                    os.path.join(C_DIR, "mcu", "host_check.c"), *core_sources(),
                    os.path.join(export_dir, f"{model}_model.c"), "-o", out], check=True)
    return out


def run_host_check(binary, raw_images):
    """Each image's logits line (c/inference --logits' format) from raw C*H*W bytes, image after image."""
    proc = subprocess.run([binary], input=raw_images, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()
