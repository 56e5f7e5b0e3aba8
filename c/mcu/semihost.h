/* semihost.h -- what the firmware asks of its host through ARM semihosting (startup.c) */
#ifndef FPGAI_SEMIHOST_H
#define FPGAI_SEMIHOST_H

void semihost_print(const char *s);         /* a NUL-terminated string on the host's stdout */
void semihost_exit(int ok);                 /* QEMU exits with 0 (ok) or 1 */

#endif
