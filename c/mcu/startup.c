/*
 * startup.c -- bare-metal start for the Cortex-M4 firmware (c/mcu/mps2.ld): the vector table,
 * the reset handler (.data copied from flash, .bss zeroed, main called), and ARM semihosting
 * (bkpt 0xab) for the two things the firmware asks of its host: print a string, exit.
 */
#include <stdint.h>

#include "semihost.h"

extern uint32_t _data_start, _data_end, _data_load, _bss_start, _bss_end, _stack_top;
int main(void);
void reset_handler(void);

static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void semihost_print(const char *s)
{
    semihost(0x04, s);                          /* SYS_WRITE0: a NUL-terminated string */
}

void semihost_exit(int ok)
{
    /* SYS_EXIT with ADP_Stopped_ApplicationExit (QEMU exits 0), else RunTimeErrorUnknown (1) */
    semihost(0x18, (const void *)(uintptr_t)(ok ? 0x20026 : 0x20023));
    for (;;)
        ;
}

static void fault_handler(void)
{
    semihost_print("error: hard fault\n");
    semihost_exit(0);
}

void reset_handler(void)
{
    for (uint32_t *src = &_data_load, *dst = &_data_start; dst < &_data_end;)
        *dst++ = *src++;
    for (uint32_t *dst = &_bss_start; dst < &_bss_end;)
        *dst++ = 0;
    semihost_exit(main() == 0);
}

/* initial stack pointer, reset, NMI, hard fault, then the other faults */
__attribute__((section(".vectors"), used)) static const void *const vectors[16] = {
    &_stack_top, (const void *)reset_handler, (const void *)fault_handler, (const void *)fault_handler,
    (const void *)fault_handler, (const void *)fault_handler, (const void *)fault_handler,
};
