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

void ucspitls_block_keep(struct ucspitls_block *b, char *buf, size_t cap)
{
  b->keep = buf;
  b->keepcap = cap;
}

size_t ucspitls_block_feed(struct ucspitls_block *b, const char *s, size_t n)
{
  size_t i, cap;
  for (i = 0; i < n && !b->done; i++) {
    char c = s[i];
    b->total++;
    if (b->keep && !b->over && !(c == 0 && b->prevnul)) {
      if (b->kept < b->keepcap) b->keep[b->kept++] = c;
      else b->over = 1;
    }
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
  if (io_ending()) return UCSPITLS_STOPPED;
  for (;;) {
    r = write(ctl, "Y", 1);
    if (r == 1) break;
    /* a super-server that went away cannot do the handshake */
    if (r < 0 && (errno == EPIPE || errno == ECONNRESET)) return UCSPITLS_GONE;
    if (r < 0 && errno != EINTR && errno != EAGAIN) return UCSPITLS_ERROR;
  }
  while (!b->done) {
    struct pollfd p[2];
    int w;
    p[0].fd = ctl; p[0].events = POLLIN;
    p[1].fd = io_sigfd(); p[1].events = POLLIN;
    w = poll(p, 2, io_left(deadline));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return UCSPITLS_ERROR;
    if (!w) return UCSPITLS_TIMEOUT;
    if (p[1].revents && io_signalled()) return UCSPITLS_STOPPED;
    if (!p[0].revents) continue;
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

static size_t namelen(const char *s)
{
  return strcspn(s, "=");
}

static long find(char **env, size_t n, const char *name, size_t len)
{
  size_t i;
  for (i = 0; i < n; i++)
    if (namelen(env[i]) == len && !memcmp(env[i], name, len)) return (long)i;
  return -1;
}

/* The kept entry at *at, advancing *at past it; null after the last
 * complete one (a block cut short by EOF may end inside an entry). */
static char *next(const struct ucspitls_block *b, size_t *at)
{
  char *s = b->keep + *at, *end;
  if (*at >= b->kept || !(end = memchr(s, 0, b->kept - *at))) return 0;
  *at += (size_t)(end - s) + 1;
  return s;
}

long ucspitls_env(const struct ucspitls_block *b, char **env, size_t n, size_t max,
                  int (*skip)(const char *))
{
  size_t at = 0, sets = 0;
  char *entry;
  if (!b->keep || b->over) return (long)n;
  /* room first, so that env is never left half done */
  while ((entry = next(b, &at)) != 0)
    if (entry[namelen(entry)] == '=') sets++;
  if (n + sets + 1 > max) return -1;
  at = 0;
  while ((entry = next(b, &at)) != 0) {
    size_t len = namelen(entry);
    long i = find(env, n, entry, len);
    if (!len || (skip && skip(entry))) continue;
    if (entry[len] == '=') {
      if (i >= 0) env[i] = entry;
      else env[n++] = entry;
      continue;
    }
    while (i >= 0) {
      memmove(env + i, env + i + 1, (n - (size_t)i - 1) * sizeof *env);
      n--;
      i = find(env, n, entry, len);
    }
  }
  env[n] = 0;
  return (long)n;
}
