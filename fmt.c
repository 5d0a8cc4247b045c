/* fmt.c: a small formatter for the log lines (see fmt.h). */
#include "fmt.h"

struct out {
  char *buf;
  size_t size, n;
};

static void put(struct out *o, char c)
{
  if (o->n + 1 < o->size) o->buf[o->n++] = c;
}

/* v in decimal, at least width digits (padded with pad) after the sign. */
static void number(struct out *o, unsigned long long v, int negative, unsigned width, char pad)
{
  char d[24];
  unsigned n = 0;
  do {
    d[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  if (negative) put(o, '-');
  for (; width > n; width--) put(o, pad);
  while (n) put(o, d[--n]);
}

/* ap by address: C99 7.15 lets a va_list be passed on so, and the
 * callee's va_arg() then moves the caller's. clang-analyzer 14 loses
 * track of a va_list started in fmt() and passed here, and reports it
 * uninitialized: a false report, silenced for this function alone. */
/* NOLINTBEGIN(clang-analyzer-valist.Uninitialized) */
static size_t format(char *buf, size_t size, const char *f, va_list *ap)
{
  struct out o;
  o.buf = buf;
  o.size = size;
  o.n = 0;
  for (; *f; f++) {
    const char *start = f;
    unsigned width = 0, longs = 0;
    unsigned long prec = (unsigned long)-1;
    char pad = ' ';
    if (*f != '%') { put(&o, *f); continue; }
    f++;
    if (*f == '0') { pad = '0'; f++; }
    for (; *f >= '0' && *f <= '9'; f++) width = width * 10 + (unsigned)(*f - '0');
    if (*f == '.')
      for (prec = 0, f++; *f >= '0' && *f <= '9'; f++) prec = prec * 10 + (unsigned long)(*f - '0');
    for (; *f == 'l' && longs < 2; f++) longs++;
    switch (*f) {
    case 's': {
      const char *s = va_arg(*ap, const char *);
      for (; *s && prec; s++, prec--) put(&o, *s);
      break;
    }
    case 'c': put(&o, (char)va_arg(*ap, int)); break;
    case 'd': {
      long long v = longs == 2 ? va_arg(*ap, long long) : longs ? va_arg(*ap, long) : va_arg(*ap, int);
      number(&o, v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v, v < 0, width, pad);
      break;
    }
    case 'u': {
      unsigned long long v = longs == 2 ? va_arg(*ap, unsigned long long)
                           : longs ? va_arg(*ap, unsigned long) : va_arg(*ap, unsigned);
      number(&o, v, 0, width, pad);
      break;
    }
    case '%': put(&o, '%'); break;
    default:
      /* not ours: copied, so that a mistake shows in the line */
      for (; start <= f && *start; start++) put(&o, *start);
      if (!*f) f--;
      break;
    }
  }
  o.buf[o.n] = 0;
  return o.n;
}
/* NOLINTEND(clang-analyzer-valist.Uninitialized) */

size_t fmt_va(char *buf, size_t size, const char *f, va_list ap)
{
  size_t n;
  va_list copy;
  va_copy(copy, ap);
  n = format(buf, size, f, &copy);
  va_end(copy);
  return n;
}

size_t fmt(char *buf, size_t size, const char *f, ...)
{
  size_t n;
  va_list ap;
  va_start(ap, f);
  n = format(buf, size, f, &ap);
  va_end(ap);
  return n;
}
