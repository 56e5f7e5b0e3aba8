/* dump.h -- ./c/inference --dump-layers DIR (dump.c): golden vectors in model/formats/golden.py's layout */
#ifndef FPGAI_DUMP_H
#define FPGAI_DUMP_H

#include "datasets.h"

/* Every op's output for the first `count` images of ds into the folder dir (whole or not at all) */
void dump_layers(const Model *m, const Dataset *ds, size_t count, const char *dir);

#endif
