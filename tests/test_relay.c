/* Unit tests of the built-in relay over real sockets and pipes: bytes
 * exact and in order behind the engine's leftovers, EOF passed on in each
 * direction alone, a dead smtpd stdin, the drain after the smtpd is done,
 * bounded whatever the client does, the idle and stall bounds, descriptor
 * flags restored. Built twice: as test_relay
 * with the Linux splice(2) path where there is one, and as test_relay_copy
 * with -DRELAY_NO_SPLICE, the portable read/write path. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "io.h"
#include "relay.h"
#include "check.h"

#define BULK (8L * 1024 * 1024)

/* The relay's four descriptors and the peers' ends of them. */
struct rig {
  int cfdr, cfdw;     /* relay side of the client */
  int client_w, client_r;
  int sfdr, sfdw;     /* relay side of the smtpd */
  int smtpd_w, smtpd_r;
  pid_t relay;
};

static unsigned char pattern(int seed, long i)
{
  unsigned long x = (unsigned long)i * 2654435761UL + (unsigned long)seed * 40503UL;
  return (unsigned char)(x >> 13);
}

/* tls: the client side is two pipes (a TLS engine's), else one socket. */
static void rig_open(struct rig *r, int tls)
{
  int a[2], b[2], c[2];
  if (tls) {
    CHECK(pipe(a) == 0 && pipe(b) == 0);
    r->cfdr = a[0]; r->client_w = a[1];
    r->client_r = b[0]; r->cfdw = b[1];
  } else {
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0);
    r->cfdr = r->cfdw = a[1];
    r->client_w = r->client_r = a[0];
  }
  CHECK(pipe(b) == 0 && pipe(c) == 0);
  r->sfdw = b[1]; r->smtpd_r = b[0];
  r->sfdr = c[0]; r->smtpd_w = c[1];
}

/* Forks the relay with leftovers queued both ways. Its exit status is its
 * result, plus 8 if it left a descriptor's flags changed. */
static void rig_start(struct rig *r, const char *up, const char *down,
                      unsigned long timeout, unsigned long draintimeout)
{
  r->relay = fork();
  if (r->relay) return;
  {
    int before = fcntl(r->cfdr, F_GETFL), res;
    signal(SIGPIPE, SIG_IGN);
    alarm(30);
    close(r->client_w);
    if (r->client_r != r->client_w) close(r->client_r);
    close(r->smtpd_w);
    close(r->smtpd_r);
    if (relay_preload(RELAY_TOSERVER, up, strlen(up)) || relay_preload(RELAY_TOCLIENT, down, strlen(down)))
      _exit(99);
    res = (int)relay_run(r->cfdr, r->cfdw, r->sfdr, r->sfdw, timeout, draintimeout);
    _exit(res + (fcntl(r->cfdr, F_GETFL) != before ? 8 : 0));
  }
}

/* The peers keep only their own ends. */
static void rig_detach(struct rig *r)
{
  close(r->cfdr);
  if (r->cfdw != r->cfdr) close(r->cfdw);
  close(r->sfdr);
  close(r->sfdw);
}

static int rig_wait(struct rig *r)
{
  int st;
  while (waitpid(r->relay, &st, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

/* Runs in a child: writes n bytes of pattern seed to fd, then ends it,
 * after a byte on hold if that is not -1. */
static pid_t writer(int fd, int seed, long n, int shut, int hold)
{
  static char buf[16384];
  pid_t pid = fork();
  long i = 0;
  if (pid) return pid;
  signal(SIGPIPE, SIG_IGN);
  alarm(30);
  while (i < n) {
    size_t k = 0;
    ssize_t w;
    while (k < sizeof buf && i + (long)k < n) { buf[k] = (char)pattern(seed, i + (long)k); k++; }
    w = write(fd, buf, k);
    if (w < 0) _exit(errno == EPIPE ? 2 : 1);
    i += w;
  }
  if (shut) shutdown(fd, SHUT_WR);
  if (hold >= 0 && read(hold, buf, 1) != 1) _exit(3);
  _exit(0);
}

/* Reads fd to EOF, checking it is head then n bytes of pattern seed. */
static int reader_check(int fd, const char *head, int seed, long n, long *got)
{
  static char buf[65536];
  size_t hl = strlen(head);
  long at = 0;
  int ok = 1;
  for (;;) {
    ssize_t k = read(fd, buf, sizeof buf), j;
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    for (j = 0; j < k; j++, at++) {
      unsigned char want = at < (long)hl ? (unsigned char)head[at] : pattern(seed, at - (long)hl);
      if ((unsigned char)buf[j] != want) ok = 0;
    }
  }
  *got = at;
  return ok && at == (long)hl + n;
}

static void both_ways(int tls)
{
  struct rig r;
  pid_t a, b, c;
  long got;
  int st, hold[2];
  rig_open(&r, tls);
  rig_start(&r, "EHLO left\r\n", "250 left\r\n", 10000, 10000);
  rig_detach(&r);
  CHECK(pipe(hold) == 0);
  a = writer(r.client_w, 1, BULK, !tls, -1);
  if (tls) close(r.client_w);
  /* the smtpd's output ends only once it has read all of its input: an
   * earlier EOF would mean it is done, and the relay would rightly drop
   * what the client still sends */
  b = writer(r.smtpd_w, 2, BULK, 0, hold[0]);
  close(r.smtpd_w);
  c = fork();
  if (!c) {
    alarm(30);
    _exit(reader_check(r.smtpd_r, "EHLO left\r\n", 1, BULK, &got) ? 0 : 1);
  }
  close(r.smtpd_r);
  CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0);
  CHECK(write(hold[1], "x", 1) == 1);
  CHECK(reader_check(r.client_r, "250 left\r\n", 2, BULK, &got));
  close(hold[0]);
  close(hold[1]);
  CHECK(waitpid(a, &st, 0) == a && WIFEXITED(st) && WEXITSTATUS(st) == 0);
  CHECK(waitpid(b, &st, 0) == b && WIFEXITED(st) && WEXITSTATUS(st) == 0);
  CHECK(rig_wait(&r) == RELAY_OK);
  close(r.client_r);
}

static void socket_both_ways(void) { both_ways(0); }
static void tls_pipes_both_ways(void) { both_ways(1); }

static ssize_t readall(int fd, char *buf, size_t n)
{
  size_t at = 0;
  for (;;) {
    ssize_t k = read(fd, buf + at, n - at);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0 || (at += (size_t)k) == n) return (ssize_t)at;
  }
}

/* Reads fd to EOF as a string. */
static const char *text(int fd)
{
  static char buf[256];
  ssize_t n = readall(fd, buf, sizeof buf - 1);
  buf[n > 0 ? n : 0] = 0;
  return buf;
}

/* The client's EOF reaches the smtpd while the smtpd's answer still comes
 * back: each direction ends alone. */
static void halfclose_each_way(void)
{
  struct rig r;
  rig_open(&r, 0);
  rig_start(&r, "", "", 10000, 10000);
  rig_detach(&r);
  CHECK(write(r.client_w, "QUIT\r\n", 6) == 6);
  shutdown(r.client_w, SHUT_WR);
  CHECK_STR(text(r.smtpd_r), "QUIT\r\n");
  CHECK(write(r.smtpd_w, "221 bye\r\n", 9) == 9);
  close(r.smtpd_w);
  CHECK_STR(text(r.client_r), "221 bye\r\n");
  CHECK(rig_wait(&r) == RELAY_OK);
  close(r.smtpd_r);
  close(r.client_r);
}

/* The smtpd stops reading: what the client still sends is dropped, and the
 * smtpd's last reply still reaches the client. */
static void dead_smtpd_stdin(void)
{
  struct rig r;
  pid_t a;
  int st;
  rig_open(&r, 0);
  rig_start(&r, "", "", 10000, 10000);
  rig_detach(&r);
  close(r.smtpd_r);
  a = writer(r.client_w, 3, BULK, 1, -1);
  CHECK(write(r.smtpd_w, "421 bye\r\n", 9) == 9);
  close(r.smtpd_w);
  CHECK_STR(text(r.client_r), "421 bye\r\n");
  CHECK(waitpid(a, &st, 0) == a && WIFEXITED(st) && WEXITSTATUS(st) == 0);
  CHECK(rig_wait(&r) == RELAY_OK);
  close(r.client_r);
}

/* The smtpd is done but the client never closes: the client gets all and
 * its EOF at once (a shutdown, the socket being both ways), and the relay
 * gives up after the drain timeout. */
static void drain_timeout(void)
{
  struct rig r;
  long long t0;
  rig_open(&r, 0);
  rig_start(&r, "", "", 0, 1000);
  rig_detach(&r);
  t0 = io_now();
  CHECK(write(r.smtpd_w, "221 bye\r\n", 9) == 9);
  close(r.smtpd_w);
  close(r.smtpd_r);
  CHECK_STR(text(r.client_r), "221 bye\r\n");
  CHECK(waitpid(r.relay, NULL, WNOHANG) == 0); /* the EOF came before the relay ended */
  CHECK(rig_wait(&r) == RELAY_DRAIN);
  CHECK(io_now() - t0 >= 900 && io_now() - t0 < 5000);
  close(r.client_r);
}

static void idle_timeout(void)
{
  struct rig r;
  long long t0 = io_now();
  rig_open(&r, 1);
  rig_start(&r, "", "", 200, 200);
  rig_detach(&r);
  CHECK(rig_wait(&r) == RELAY_IDLE);
  CHECK(io_now() - t0 >= 150 && io_now() - t0 < 5000);
  close(r.client_w);
  close(r.client_r);
  close(r.smtpd_w);
  close(r.smtpd_r);
}

/* Runs in a child: one byte to fd every ms milliseconds, until it fails. */
static pid_t trickler(int fd, int ms)
{
  pid_t pid = fork();
  if (pid) return pid;
  signal(SIGPIPE, SIG_IGN);
  alarm(30);
  while (write(fd, "x", 1) == 1) poll(NULL, 0, ms);
  _exit(0);
}

/* Fills the smtpd's pipe until the relay, with the client reading
 * nothing, has taken nothing from it for 200 ms. */
static void fill(int fd)
{
  static char buf[65536];
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  do {
    while (write(fd, buf, sizeof buf) > 0) ;
    poll(NULL, 0, 200);
  } while (write(fd, buf, 1) == 1);
}

/* After the smtpd's end, a client sending a byte every 100 ms does not
 * stretch the drain bound, which no idle bound would end. */
static void drain_despite_trickle(void)
{
  struct rig r;
  long long t0;
  pid_t t;
  rig_open(&r, 1);
  rig_start(&r, "", "", 0, 1000);
  rig_detach(&r);
  CHECK(write(r.smtpd_w, "221 bye\r\n", 9) == 9);
  t0 = io_now();
  close(r.smtpd_w);
  close(r.smtpd_r);
  t = trickler(r.client_w, 100);
  CHECK_STR(text(r.client_r), "221 bye\r\n");
  CHECK(rig_wait(&r) == RELAY_DRAIN);
  CHECK(io_now() - t0 >= 900 && io_now() - t0 < 5000);
  CHECK(waitpid(t, NULL, 0) == t); /* the relay's end closed its pipe */
  close(r.client_w);
  close(r.client_r);
}

/* A client that never reads: the smtpd's output fills every buffer and
 * the smtpd ends with bytes still unread in its pipe. The drain bound
 * counts from that end, though the relay never read that far. */
static void drain_with_client_window_closed(void)
{
  struct rig r;
  long long t0;
  rig_open(&r, 0);
  rig_start(&r, "", "", 0, 1000);
  rig_detach(&r);
  fill(r.smtpd_w);
  t0 = io_now();
  close(r.smtpd_w);
  close(r.smtpd_r);
  CHECK(rig_wait(&r) == RELAY_DRAIN);
  CHECK(io_now() - t0 >= 900 && io_now() - t0 < 5000);
  close(r.client_r);
}

/* The smtpd lives and reads what a client sends a byte at a time, while
 * that client reads nothing of what waits for it: bytes move all along,
 * and still the client is dropped after the idle bound. */
static void stalled_client(void)
{
  struct rig r;
  long long t0;
  pid_t t, sink;
  rig_open(&r, 0);
  rig_start(&r, "", "", 700, 0);
  rig_detach(&r);
  sink = fork();
  if (!sink) {
    char c;
    alarm(30);
    while (read(r.smtpd_r, &c, 1) == 1) ;
    _exit(0);
  }
  close(r.smtpd_r);
  t0 = io_now(); /* the stall starts after this, while filling */
  fill(r.smtpd_w);
  t = trickler(r.client_w, 100);
  CHECK(rig_wait(&r) == RELAY_STALLED);
  CHECK(io_now() - t0 >= 650 && io_now() - t0 < 5000);
  close(r.client_w);
  close(r.smtpd_w);
  CHECK(waitpid(t, NULL, 0) == t);
  CHECK(waitpid(sink, NULL, 0) == sink);
}

/* The smtpd's side ends while leftovers for it are still queued and it
 * reads them: queued bytes are never lost to an EOF. */
static void leftovers_before_eof(void)
{
  struct rig r;
  rig_open(&r, 1);
  rig_start(&r, "MAIL FROM:<a@b>\r\n", "", 10000, 10000);
  rig_detach(&r);
  close(r.client_w);
  CHECK_STR(text(r.smtpd_r), "MAIL FROM:<a@b>\r\n");
  close(r.smtpd_w);
  CHECK_STR(text(r.client_r), "");
  CHECK(rig_wait(&r) == RELAY_OK);
  close(r.smtpd_r);
  close(r.client_r);
}

int main(void)
{
  alarm(120);
  RUN(socket_both_ways);
  RUN(tls_pipes_both_ways);
  RUN(halfclose_each_way);
  RUN(dead_smtpd_stdin);
  RUN(drain_timeout);
  RUN(idle_timeout);
  RUN(drain_despite_trickle);
  RUN(drain_with_client_window_closed);
  RUN(stalled_client);
  RUN(leftovers_before_eof);
  return check_failures != 0;
}
