/* check.h: the unit tests' harness. Each test prints one line, PASS name or
 * FAIL name, that tests/run.py counts. */
#ifndef CHECK_H
#define CHECK_H

#include <stdio.h>
#include <string.h>

static const char *check_name;
static int check_bad, check_failures;

static void check_show(const char *label, const char *s)
{
  printf("  %s: \"", label);
  for (; *s; s++) {
    if (*s == '\r') printf("\\r");
    else if (*s == '\n') printf("\\n");
    else if ((unsigned char)*s < 32 || (unsigned char)*s > 126) printf("\\x%02x", (unsigned char)*s);
    else putchar(*s);
  }
  printf("\"\n");
}

#define CHECK(cond) do { if (!(cond)) { \
  printf("  %s:%d: %s: failed: %s\n", __FILE__, __LINE__, check_name, #cond); \
  check_bad = 1; } } while (0)

#define CHECK_STR(got, want) do { const char *g_ = (got), *w_ = (want); \
  if (strcmp(g_, w_)) { \
    printf("  %s:%d: %s: %s differs\n", __FILE__, __LINE__, check_name, #got); \
    check_show("got ", g_); check_show("want", w_); check_bad = 1; } } while (0)

#define RUN(t) do { check_name = #t; check_bad = 0; t(); \
  printf("%s %s\n", check_bad ? "FAIL" : "PASS", #t); check_failures += check_bad; \
  fflush(stdout); } while (0)

#endif
