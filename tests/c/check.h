/*
 * check.h - the C unit tests' one assertion: check() counts a pass, or
 * prints the failure and counts it (the test goes on, so one run shows
 * every failure); check_summary() prints "N passed, M failed" and gives the
 * exit status. Header-only: each test program is one file.
 */
#ifndef FE_TEST_CHECK_H
#define FE_TEST_CHECK_H

#include <stdarg.h>
#include <stdio.h>

static int passed, failed;

static void check(int ok, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void check(int ok, const char *name, const char *fmt, ...)
{
    if (ok) {
        passed++;
        return;
    }
    failed++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL %s: ", name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Prints the tally; returns the program's exit status (0: nothing failed). */
static int check_summary(void)
{
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

#endif /* FE_TEST_CHECK_H */
