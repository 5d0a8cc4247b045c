/* ucspitls.c: the control socket of a UCSPI-TLS server. The 'Y' command is
 * the only one that tells the application the handshake is done, so it is
 * the only one we send. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io.h"
#include "ucspitls.h"

int ucspitls_fd(const char *name, int *fd, const char **problem)
{
  const char *s = getenv(name);
  long v = 0;
  if (!s) { *problem = "is not set"; return -1; }
  if (!*s) { *problem = "is empty"; return -1; }
  for (; *s; s++) {
    if (*s < '0' || *s > '9') { *problem = "is not a decimal descriptor number"; return -1; }
    if (v > (INT_MAX - (*s - '0')) / 10) { *problem = "is too large for a descriptor"; return -1; }
    v = v * 10 + (*s - '0');
  }
  if (fcntl((int)v, F_GETFD) < 0) { *problem = "does not name an open descriptor"; return -1; }
  *fd = (int)v;
  return 0;
}

void ucspitls_block_init(struct ucspitls_block *b)
{
  memset(b, 0, sizeof *b);
  b->target = -1;
}

static char *target(struct ucspitls_block *b, size_t *cap)
{
  if (b->target == 0) { *cap = sizeof b->protocol; return b->protocol; }
  *cap = sizeof b->cipher;
  return b->cipher;
}

static int named(const struct ucspitls_block *b)
{
  if (b->namelen == 12 && !memcmp(b->name, "SSL_PROTOCOL", 12)) return 0;
  if (b->namelen == 10 && !memcmp(b->name, "SSL_CIPHER", 10)) return 1;
  return -1;
}

static void entry_end(struct ucspitls_block *b)
{
  size_t cap;
  if (!b->invalue) b->target = named(b); /* NAME without '=': unset it */
  if (b->target >= 0) target(b, &cap)[b->invalue ? b->vallen : 0] = 0;
  b->invalue = 0;
  b->target = -1;
  b->namelen = b->vallen = 0;
}

size_t ucspitls_block_feed(struct ucspitls_block *b, const char *s, size_t n)
{
  size_t i, cap;
  for (i = 0; i < n && !b->done; i++) {
    char c = s[i];
    b->total++;
    if (!c) {
      if (b->prevnul) b->done = 1;
      else entry_end(b);
      b->prevnul = 1;
      continue;
    }
    b->prevnul = 0;
    if (!b->invalue) {
      if (c == '=') {
        b->invalue = 1;
        b->target = named(b);
      } else if (b->namelen < sizeof b->name) b->name[b->namelen++] = c;
      /* a longer name is none we keep: it stays at the cap and matches nothing */
    } else if (b->target >= 0) {
      char *v = target(b, &cap);
      /* the value ends up in a log line: keep it printable */
      if (b->vallen + 1 < cap) v[b->vallen++] = (char)((c >= ' ' && c < 127) ? c : '?');
    }
  }
  return i;
}

enum ucspitls_result ucspitls_start(int ctl, int onebyte, long long deadline,
                                    struct ucspitls_block *b)
{
  char buf[4096];
  ssize_t r;
  ucspitls_block_init(b);
  for (;;) {
    r = write(ctl, "Y", 1);
    if (r == 1) break;
    /* a super-server that went away cannot do the handshake: same as a refusal */
    if (r < 0 && (errno == EPIPE || errno == ECONNRESET)) return UCSPITLS_FAILED;
    if (r < 0 && errno != EINTR && errno != EAGAIN) return UCSPITLS_ERROR;
  }
  while (!b->done) {
    int w = io_wait(ctl, POLLIN, deadline);
    if (w < 0) return UCSPITLS_ERROR;
    if (!w) return UCSPITLS_TIMEOUT;
    r = read(ctl, buf, onebyte ? 1 : sizeof buf);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      /* a reset control socket is the same news as a closed one */
      if (errno == ECONNRESET) r = 0;
      else return UCSPITLS_ERROR;
    }
    if (!r) return b->total ? UCSPITLS_OK : UCSPITLS_FAILED;
    ucspitls_block_feed(b, buf, (size_t)r);
    if (b->total > UCSPITLS_BLOCKMAX) return UCSPITLS_TOOBIG;
  }
  return UCSPITLS_OK;
}
