/* bench_smtpd.c: the benchmark's sink smtpd on stdin/stdout. It answers
 * just enough SMTP for the driver's sessions and discards message bodies
 * as fast as it can read them, so the floor it sets is low.
 *
 * At the end it reaps every child it has (when it runs behind a proxy
 * that execs the smtpd in the parent, the proxy's process is its child),
 * so the proxy's CPU time reaches the driver's RUSAGE_CHILDREN, and it
 * writes "pid maxrss_kib_of_children\n" to descriptor 9 if that is open. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static char in[65536];
static size_t inpos, inlen;
static char out[1024];
static size_t outlen;

static void flush(void)
{
  size_t w = 0;
  while (w < outlen) {
    ssize_t r = write(1, out + w, outlen - w);
    if (r < 0) {
      if (errno == EINTR) continue;
      _exit(111);
    }
    w += (size_t)r;
  }
  outlen = 0;
}

static void reply(const char *s)
{
  size_t n = strlen(s);
  if (outlen + n > sizeof out) flush();
  memcpy(out + outlen, s, n);
  outlen += n;
}

/* Keeps what is unread and reads more after it; 0 at EOF. Replies go out
 * first, since the peer may be waiting for them. */
static int more(void)
{
  ssize_t r;
  flush();
  if (inpos) {
    memmove(in, in + inpos, inlen - inpos);
    inlen -= inpos;
    inpos = 0;
  }
  if (inlen == sizeof in) inlen = 0; /* an absurd line: drop it */
  do r = read(0, in + inlen, sizeof in - inlen);
  while (r < 0 && errno == EINTR);
  if (r <= 0) return 0;
  inlen += (size_t)r;
  return 1;
}

/* Returns the next line without its LF, or NULL at EOF. */
static char *getline_(size_t *len)
{
  for (;;) {
    char *lf = memchr(in + inpos, '\n', inlen - inpos);
    if (lf) {
      char *line = in + inpos;
      *len = (size_t)(lf - line);
      inpos += *len + 1;
      return line;
    }
    if (!more()) return NULL;
  }
}

/* Discards a message body up to its "." line; 0 at EOF. Lines are found
 * with memchr so that the bulk scenario measures the pipes, not us. */
static int data(void)
{
  int bol = 1;
  for (;;) {
    char *p = in + inpos, *end = in + inlen, *lf;
    if (bol) {
      size_t k = inlen - inpos < 3 ? inlen - inpos : 3;
      if (!memcmp(p, ".\r\n", k)) {
        if (k == 3) {
          inpos += 3;
          return 1;
        }
        if (!more()) return 0;
        continue;
      }
    }
    lf = memchr(p, '\n', (size_t)(end - p));
    if (!lf) {
      inpos = inlen;
      bol = 0;
      if (!more()) return 0;
      continue;
    }
    inpos = (size_t)(lf + 1 - in);
    bol = 1;
  }
}

static int verb(const char *line, size_t len, const char *v)
{
  size_t i, n = strlen(v);
  if (len < n) return 0;
  for (i = 0; i < n; i++)
    if ((line[i] & ~0x20) != v[i]) return 0;
  return len == n || line[n] == ' ' || line[n] == '\r';
}

static void finish(void)
{
  struct rusage ru;
  char buf[64];
  int n;
  close(0);
  close(1);
  while (wait(NULL) > 0 || errno == EINTR) ;
  if (fcntl(9, F_GETFD) < 0) _exit(0);
  getrusage(RUSAGE_CHILDREN, &ru);
  n = snprintf(buf, sizeof buf, "%ld %ld\n", (long)getpid(), (long)ru.ru_maxrss);
  if (write(9, buf, (size_t)n) < 0) _exit(111);
  _exit(0);
}

int main(void)
{
  char *line;
  size_t len;
  reply("220 bench.test ESMTP sink\r\n");
  while ((line = getline_(&len))) {
    if (verb(line, len, "EHLO"))
      reply("250-bench.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
    else if (verb(line, len, "HELO") || verb(line, len, "MAIL") || verb(line, len, "RCPT") ||
             verb(line, len, "RSET") || verb(line, len, "NOOP"))
      reply("250 2.0.0 ok\r\n");
    else if (verb(line, len, "DATA")) {
      reply("354 go ahead\r\n");
      if (!data()) break;
      reply("250 2.0.0 queued\r\n");
    } else if (verb(line, len, "QUIT")) {
      reply("221 2.0.0 bye\r\n");
      flush();
      break;
    } else
      reply("502 5.5.1 not here\r\n");
  }
  finish();
  return 0;
}
