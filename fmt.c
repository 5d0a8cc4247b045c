/* fmt.c: a small formatter for the log lines (see fmt.h). */
#include "fmt.h"

/* NOLINTBEGIN(clang-analyzer-valist.Uninitialized): clang-analyzer 14
 * loses track of a va_list started in fmt() and passed here, and reports
 * it uninitialized: a false report. */
size_t fmt_va(char *buf, size_t size, const char *f, va_list ap)
{
  size_t n = 0;
  for (; *f; f++) {
    char d[24];
    const char *s;
    unsigned long long v;
    unsigned long prec = (unsigned long)-1;
    unsigned width = 0, len = 0;
    if (*f != '%' || !f[1]) {
      d[0] = *f;
      s = d;
      prec = 1;
    } else if (*++f == 's' || (*f == '.' && f[1] >= '0' && f[1] <= '9')) {
      for (prec = *f == '.' ? 0 : prec; *f == '.' || (*f >= '0' && *f <= '9'); f++)
        if (*f != '.') prec = prec * 10 + (unsigned long)(*f - '0');
      s = va_arg(ap, const char *);
    } else if (*f == 'c') {
      d[0] = (char)va_arg(ap, int);
      s = d;
      prec = 1;
    } else {
      /* %d, %lu, %llu, with an optional width padded with zeros: %03llu */
      int negative = 0;
      char *p = d + sizeof d - 1;
      for (; *f >= '0' && *f <= '9'; f++) width = width * 10 + (unsigned)(*f - '0');
      if (*f == 'd') {
        int i = va_arg(ap, int);
        negative = i < 0;
        v = negative ? 0ULL - (unsigned long long)i : (unsigned long long)i;
      } else if (f[1] == 'l') {
        v = va_arg(ap, unsigned long long);
        f += 2;
      } else {
        v = va_arg(ap, unsigned long);
        f++;
      }
      *p = 0;
      do {
        *--p = (char)('0' + v % 10);
        v /= 10;
        len++;
      } while (v || len < width);
      if (negative) *--p = '-';
      s = p;
    }
    for (; prec && *s; s++, prec--)
      if (n + 1 < size) buf[n++] = *s;
  }
  buf[n] = 0;
  return n;
}
/* NOLINTEND(clang-analyzer-valist.Uninitialized) */

size_t fmt(char *buf, size_t size, const char *f, ...)
{
  size_t n;
  va_list ap;
  va_start(ap, f);
  n = fmt_va(buf, size, f, ap);
  va_end(ap);
  return n;
}
