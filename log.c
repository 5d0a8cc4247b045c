/* log.c: the log lines and the end line (see log.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>
#include "fmt.h"
#include "io.h"
#include "log.h"

unsigned long log_verbosity = 1;

static char tag[80];         /* "pid N ip A" */
static long long started;    /* 0: no session yet, so no end line */
static char tlsdesc[200];    /* protocol and cipher; empty: plaintext */
static unsigned long long bytesin, bytesout;

void log_tag(void)
{
  const char *ip = getenv("TCPREMOTEIP");
  char addr[48];
  size_t n = 0;
  if (!ip || !*ip) ip = getenv("SSLREMOTEIP");
  /* up to what no address holds (an IPv6 zone, say) */
  for (; ip && *ip && n < sizeof addr - 1; ip++) {
    if (!((*ip >= '0' && *ip <= '9') || (*ip >= 'a' && *ip <= 'f') || (*ip >= 'A' && *ip <= 'F')
          || *ip == '.' || *ip == ':'))
      break;
    addr[n++] = *ip;
  }
  addr[n] = 0;
  fmt(tag, sizeof tag, n ? "pid %lu ip %s" : "pid %lu", (unsigned long)getpid(), addr);
}

void log_line(unsigned long level, const char *kind, const char *f, ...)
{
  /* one write of at most 512 bytes: lines from two processes never mix */
  char buf[512];
  size_t n;
  va_list ap;
  if (log_verbosity < level) return;
  n = fmt(buf, sizeof buf - 1, "%s: %s: %s%s", PROG, kind, tag, tag[0] ? ": " : "");
  va_start(ap, f);
  n += fmt_va(buf + n, sizeof buf - 1 - n, f, ap);
  va_end(ap);
  buf[n++] = '\n';
  while (write(2, buf, n) < 0 && errno == EINTR) ;
}

void log_session_start(void)
{
  started = io_now();
}

void log_session_tls(const char *protocol, const char *cipher)
{
  fmt(tlsdesc, sizeof tlsdesc, "%s %s", protocol, cipher);
}

void log_session_bytes(unsigned long long in, unsigned long long out)
{
  bytesin += in;
  bytesout += out;
}

void log_end(const char *why, const char *status)
{
  unsigned long long t;
  if (!started) return;
  t = (unsigned long long)(io_now() - started);
  info("end: %s, %s, %llu.%03llu s, %llu bytes in, %llu out, %s", tlsdesc[0] ? tlsdesc : "plaintext",
       why, t / 1000, t % 1000, bytesin, bytesout, status);
}
