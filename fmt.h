/* fmt.h: text formatted into a buffer, with the few conversions the log
 * lines and s6-ioconnect's arguments need. Not printf: its floating-point
 * code would be about a tenth of a static binary. */
#ifndef FMT_H
#define FMT_H

#include <stdarg.h>
#include <stddef.h>

/* Formats into buf (size > 0), always NUL-terminated, cut at size - 1;
 * returns the length written. Conversions: %s (%.32s: at most 32 bytes of
 * it), %c, %d, %lu and %llu, the last three with an optional width padded
 * with zeros (%03llu). Nothing else: a '%' before anything else is taken
 * for %lu. */
size_t fmt(char *buf, size_t size, const char *f, ...);
size_t fmt_va(char *buf, size_t size, const char *f, va_list ap);

#endif
