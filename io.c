/* io.c: a monotonic clock, deadline-bounded waits on one fd, and the
 * signal watch they keep. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>
#include "io.h"

long long io_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long io_deadline(unsigned long timeout)
{
  return timeout ? io_now() + (long long)timeout : 0;
}

int io_left(long long deadline)
{
  long long left;
  if (!deadline) return -1;
  left = deadline - io_now();
  if (left < 0) return 0;
  return left > INT_MAX ? INT_MAX : (int)left;
}

long long io_sooner(long long a, long long b)
{
  return !a ? b : !b || a < b ? a : b;
}

static int sigfd = -1;
static int (*react)(void);
static int ending;

void io_signals(int fd, int (*fn)(void))
{
  sigfd = fd;
  react = fn;
  ending = 0;
}

int io_sigfd(void)
{
  return sigfd;
}

int io_signalled(void)
{
  if (react && react()) ending = 1;
  return ending;
}

int io_ending(void)
{
  return ending;
}

int io_wait(int fd, short events, long long deadline)
{
  struct pollfd p[2];
  p[0].fd = fd;
  p[0].events = events;
  p[1].fd = sigfd;
  p[1].events = POLLIN;
  for (;;) {
    int left = ending ? 0 : io_left(deadline);
    int r = poll(p, 2, left);
    if (r > 0 && p[0].revents) return 1;
    if (r > 0) io_signalled();
    else if (!r && !left) return 0;
    else if (r < 0 && errno != EINTR) return -1;
  }
}

int io_writeall(int fd, const char *s, size_t n, size_t *done, long long deadline)
{
  while (n) {
    ssize_t w;
    int r = io_wait(fd, POLLOUT, deadline);
    if (r < 0) return -1;
    if (!r) { errno = ETIMEDOUT; return -1; }
    /* at most 512 bytes per write: a blocking fd that polled writable
     * takes that much without blocking (PIPE_BUF, SO_SNDLOWAT) */
    w = write(fd, s, n > 512 ? 512 : n);
    if (w < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return -1;
    }
    s += w;
    n -= (size_t)w;
    *done += (size_t)w;
  }
  return 0;
}
