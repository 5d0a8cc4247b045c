/* Unit tests of the UCSPI-TLS side: descriptor variables, the environment
 * block parser, and the 'Y' exchange over a real socketpair. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "io.h"
#include "ucspitls.h"
#include "check.h"

static struct ucspitls_block b;

static size_t feed(const char *s, size_t n)
{
  return ucspitls_block_feed(&b, s, n);
}

static void block_basic(void)
{
  static const char blk[] = "SSL_PROTOCOL=TLSv1.3\0SSL_CIPHER=TLS_AES_256_GCM_SHA384\0\0";
  ucspitls_block_init(&b);
  CHECK(feed(blk, sizeof blk - 1) == sizeof blk - 1);
  CHECK(b.done);
  CHECK_STR(b.protocol, "TLSv1.3");
  CHECK_STR(b.cipher, "TLS_AES_256_GCM_SHA384");
}

static void block_empty(void)
{
  ucspitls_block_init(&b);
  CHECK(feed("\0\0trailing", 10) == 2);
  CHECK(b.done);
  CHECK_STR(b.protocol, "");
}

static void block_unset_entries(void)
{
  static const char blk[] = "SSL_PROTOCOL=TLSv1.2\0SSL_PEER_CERT_HASH\0SSL_TLS_SNI_SERVERNAME\0SSL_PROTOCOL\0SSL_CIPHER=X\0\0";
  ucspitls_block_init(&b);
  CHECK(feed(blk, sizeof blk - 1) == sizeof blk - 1);
  CHECK(b.done);
  CHECK_STR(b.protocol, "");
  CHECK_STR(b.cipher, "X");
}

static void block_split_bytewise(void)
{
  static const char blk[] = "A=1\0SSL_CIPHER=ECDHE-RSA-AES128-GCM-SHA256\0B=\0SSL_PROTOCOL=TLSv1.2\0\0";
  size_t i;
  ucspitls_block_init(&b);
  for (i = 0; i < sizeof blk - 1; i++) {
    CHECK(!b.done);
    CHECK(feed(blk + i, 1) == 1);
  }
  CHECK(b.done);
  CHECK_STR(b.protocol, "TLSv1.2");
  CHECK_STR(b.cipher, "ECDHE-RSA-AES128-GCM-SHA256");
}

/* sslserver's block carries PEM certificates: well over 8 KiB */
static void block_over_8k(void)
{
  static char blk[40000];
  size_t n = 0, i, fed = 0;
  n += (size_t)sprintf(blk + n, "SSL_PROTOCOL=TLSv1.3") + 1;
  n += (size_t)sprintf(blk + n, "SSL_SERVER_CERT=-----BEGIN CERTIFICATE-----\n");
  for (i = 0; i < 30000; i++) blk[n++] = (char)('A' + i % 26);
  n += (size_t)sprintf(blk + n, "\n-----END CERTIFICATE-----") + 1;
  n += (size_t)sprintf(blk + n, "SSL_CIPHER=TLS_AES_128_GCM_SHA256") + 1;
  blk[n++] = 0;
  ucspitls_block_init(&b);
  while (fed < n) {
    size_t k = n - fed < 4096 ? n - fed : 4096;
    CHECK(feed(blk + fed, k) == k);
    fed += k;
  }
  CHECK(b.done);
  CHECK(b.total == n);
  CHECK_STR(b.protocol, "TLSv1.3");
  CHECK_STR(b.cipher, "TLS_AES_128_GCM_SHA256");
}

static void block_value_sanitized(void)
{
  static const char blk[] = "SSL_CIPHER=a\nb\033c\0\0";
  ucspitls_block_init(&b);
  feed(blk, sizeof blk - 1);
  CHECK_STR(b.cipher, "a?b?c");
}

static void block_value_truncated(void)
{
  static char blk[600];
  size_t n = (size_t)sprintf(blk, "SSL_PROTOCOL=");
  memset(blk + n, 'p', 500);
  n += 500;
  blk[n++] = 0;
  blk[n++] = 0;
  ucspitls_block_init(&b);
  CHECK(feed(blk, n) == n);
  CHECK(b.done);
  CHECK(strlen(b.protocol) == sizeof b.protocol - 1);
}

static void block_long_name(void)
{
  static char blk[200];
  size_t n = 0;
  memset(blk, 'N', 100);
  n = 100;
  n += (size_t)sprintf(blk + n, "SSL_CIPHER=no") + 1;
  n += (size_t)sprintf(blk + n, "SSL_CIPHER=yes") + 1;
  blk[n++] = 0;
  ucspitls_block_init(&b);
  CHECK(feed(blk, n) == n);
  CHECK_STR(b.cipher, "yes");
}

static int fdvar(const char *value, const char **problem)
{
  int fd = -1;
  if (value) setenv("TESTFD", value, 1);
  else unsetenv("TESTFD");
  if (ucspitls_fd("TESTFD", &fd, problem) < 0) return -1;
  return fd;
}

static void fd_variables(void)
{
  const char *p = 0;
  int fds[2];
  CHECK(fdvar("2", &p) == 2);
  CHECK(fdvar(0, &p) < 0 && !strcmp(p, "is not set"));
  CHECK(fdvar("", &p) < 0 && !strcmp(p, "is empty"));
  CHECK(fdvar("abc", &p) < 0 && !strcmp(p, "is not a decimal descriptor number"));
  CHECK(fdvar("-1", &p) < 0 && !strcmp(p, "is not a decimal descriptor number"));
  CHECK(fdvar(" 3", &p) < 0 && !strcmp(p, "is not a decimal descriptor number"));
  CHECK(fdvar("99999", &p) < 0 && !strcmp(p, "does not name an open descriptor"));
  CHECK(fdvar("99999999999999999999", &p) < 0 && !strcmp(p, "is too large for a descriptor"));
  CHECK(pipe(fds) == 0);
  close(fds[1]);
  {
    char s[16];
    sprintf(s, "%d", fds[1]);
    CHECK(fdvar(s, &p) < 0 && !strcmp(p, "does not name an open descriptor"));
    sprintf(s, "%d", fds[0]);
    CHECK(fdvar(s, &p) == fds[0]);
  }
  close(fds[0]);
}

/* A fake super-server on the other end of a socketpair: checks for 'Y',
 * then writes its pieces with pauses, and closes or keeps the socket. */
static const struct timespec pause20ms = { 0, 20000000 };

static pid_t peer(int fd, const char *const *pieces, const size_t *lens, int keepopen)
{
  pid_t pid = fork();
  if (!pid) {
    char c;
    if (read(fd, &c, 1) != 1 || c != 'Y') _exit(2);
    for (; *pieces; pieces++, lens++) {
      if (write(fd, *pieces, *lens) < 0) _exit(3);
      nanosleep(&pause20ms, 0);
    }
    if (keepopen) pause();
    _exit(0);
  }
  close(fd);
  return pid;
}

static enum ucspitls_result exchange(const char *const *pieces, const size_t *lens,
                                     int keepopen, int onebyte, unsigned long ms)
{
  int sv[2];
  pid_t pid;
  enum ucspitls_result r;
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  pid = peer(sv[1], pieces, lens, keepopen);
  ucspitls_block_init(&b);
  r = ucspitls_start(sv[0], onebyte, io_deadline(ms), &b);
  if (onebyte) {
    char c;
    CHECK(read(sv[0], &c, 1) == 1 && c == '!');
  }
  close(sv[0]);
  kill(pid, SIGTERM);
  waitpid(pid, 0, 0);
  return r;
}

static void start_sslserver_style(void)
{
  /* block in pieces, socket left open: must not wait for EOF */
  const char *pieces[] = { "SSL_PROTOCOL=TLSv1.3\0SSL_CI", "PHER=C\0", "\0", 0 };
  size_t lens[] = { 27, 7, 1 };
  long long t0 = io_now();
  CHECK(exchange(pieces, lens, 1, 0, 5000) == UCSPITLS_OK);
  CHECK(io_now() - t0 < 4000);
  CHECK_STR(b.protocol, "TLSv1.3");
  CHECK_STR(b.cipher, "C");
}

static void start_s6_style(void)
{
  const char *pieces[] = { "SSL_PROTOCOL=TLSv1.2\0SSL_CIPHER=X\0\0", 0 };
  size_t lens[] = { 35 };
  CHECK(exchange(pieces, lens, 0, 0, 5000) == UCSPITLS_OK);
  CHECK_STR(b.protocol, "TLSv1.2");
}

static void start_failed(void)
{
  const char *pieces[] = { 0 };
  CHECK(exchange(pieces, 0, 0, 0, 5000) == UCSPITLS_FAILED);
}

static void start_peer_gone(void)
{
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  close(sv[1]);
  ucspitls_block_init(&b);
  CHECK(ucspitls_start(sv[0], 0, io_deadline(1000), &b) == UCSPITLS_GONE);
  close(sv[0]);
}

/* the signal watch (io.h): a signal that ends the session stops the wait
 * for the block; one that does not (a child's end) leaves it waiting */
static int sigpipe_r, ends;
static int react(void)
{
  char c;
  while (read(sigpipe_r, &c, 1) == 1) ;
  return ends;
}

static void start_stopped(void)
{
  int sv[2], sig[2];
  long long t0;
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  CHECK(pipe(sig) == 0);
  CHECK(fcntl(sig[0], F_SETFL, O_NONBLOCK) == 0);
  sigpipe_r = sig[0];
  io_signals(sig[0], react);
  CHECK(write(sig[1], "", 1) == 1);
  ends = 0;
  ucspitls_block_init(&b);
  CHECK(ucspitls_start(sv[0], 0, io_deadline(300), &b) == UCSPITLS_TIMEOUT);
  CHECK(write(sig[1], "", 1) == 1);
  ends = 1;
  ucspitls_block_init(&b);
  t0 = io_now();
  CHECK(ucspitls_start(sv[0], 0, io_deadline(5000), &b) == UCSPITLS_STOPPED);
  CHECK(io_now() - t0 < 1000);
  io_signals(-1, 0);
  close(sv[0]);
  close(sv[1]);
  close(sig[0]);
  close(sig[1]);
}

static void start_timeout(void)
{
  const char *pieces[] = { "SSL_PROTOCOL=TLSv1.3\0", 0 };
  size_t lens[] = { 21 };
  long long t0 = io_now();
  CHECK(exchange(pieces, lens, 1, 0, 300) == UCSPITLS_TIMEOUT);
  CHECK(io_now() - t0 >= 300);
}

static void start_shared_fd(void)
{
  /* ctl is also the read fd: the byte after the block is TLS data, not ours */
  const char *pieces[] = { "SSL_PROTOCOL=TLSv1.3\0\0!", 0 };
  size_t lens[] = { 23 };
  CHECK(exchange(pieces, lens, 1, 1, 5000) == UCSPITLS_OK);
  CHECK_STR(b.protocol, "TLSv1.3");
}

static void start_toobig(void)
{
  static char big[65536];
  const char *pieces[20];
  size_t lens[20];
  int i;
  memset(big, 'x', sizeof big);
  memcpy(big, "JUNK=", 5);
  for (i = 0; i < 18; i++) { pieces[i] = big; lens[i] = sizeof big; }
  pieces[18] = 0;
  CHECK(exchange(pieces, lens, 1, 0, 10000) == UCSPITLS_TOOBIG);
}

/* --- the block as the environment of the smtpd after TLS (-e) --- */

static char keep[256];

static long apply(const char *blk, size_t n, char **env, size_t len, size_t max)
{
  ucspitls_block_init(&b);
  ucspitls_block_keep(&b, keep, sizeof keep);
  CHECK(feed(blk, n) == n);
  CHECK(b.done);
  return ucspitls_env(&b, env, len, max, 0);
}

/* env as one string, entries joined by '|' */
static const char *joined(char **env)
{
  static char out[1024];
  size_t n = 0;
  out[0] = 0;
  for (; *env; env++) n += (size_t)sprintf(out + n, "%s%s", n ? "|" : "", *env);
  return out;
}

static void env_sets_and_unsets(void)
{
  static const char blk[] = "SSL_PROTOCOL=TLSv1.3\0SSL_PEER_CERT_HASH\0PATH=/new\0A=b=c\0"
                            "SSL_CERT=-----BEGIN\nxyz\n-----END\n\0EMPTY=\0\0";
  char *env[16] = { "PATH=/bin", "SSL_PEER_CERT_HASH=stale", "TCPREMOTEIP=192.0.2.1",
                    "SSL_PEER_CERT_HASH=again", 0 };
  CHECK(apply(blk, sizeof blk - 1, env, 4, 16) == 6);
  CHECK_STR(joined(env), "PATH=/new|TCPREMOTEIP=192.0.2.1|SSL_PROTOCOL=TLSv1.3|A=b=c|"
            "SSL_CERT=-----BEGIN\nxyz\n-----END\n|EMPTY=");
}

static void env_later_entry_wins(void)
{
  static const char blk[] = "X=1\0X=2\0Y=1\0Y\0=nameless\0\0";
  char *env[8] = { 0 };
  CHECK(apply(blk, sizeof blk - 1, env, 0, 8) == 1);
  CHECK_STR(joined(env), "X=2");
}

static int noX(const char *s) { return s[0] == 'X'; }

static void env_skip(void)
{
  static const char blk[] = "X=1\0Z=2\0\0";
  char *env[8] = { "X=0", 0 };
  ucspitls_block_init(&b);
  ucspitls_block_keep(&b, keep, sizeof keep);
  feed(blk, sizeof blk - 1);
  CHECK(ucspitls_env(&b, env, 1, 8, noX) == 2);
  CHECK_STR(joined(env), "X=0|Z=2");
}

static void env_no_room(void)
{
  static const char blk[] = "A=1\0B=2\0\0";
  char *env[3] = { "C=3", 0, 0 };
  CHECK(apply(blk, sizeof blk - 1, env, 1, 3) == -1);
  CHECK_STR(joined(env), "C=3");
}

/* over the keep cap: warned about by the caller, and nothing applied */
static void env_over_cap(void)
{
  static char blk[600];
  char *env[4] = { "SSL_PROTOCOL=none", 0 };
  size_t i;
  for (i = 0; i + 2 < sizeof blk; i++) blk[i] = (i % 50 == 49) ? 0 : 'A';
  blk[sizeof blk - 2] = 0;
  blk[sizeof blk - 1] = 0;
  memcpy(blk, "SSL_PROTOCOL=TLSv1.3", 21);
  CHECK(apply(blk, sizeof blk, env, 1, 4) == 1);
  CHECK(b.over);
  CHECK_STR(b.protocol, "TLSv1.3"); /* the log still learns it */
  CHECK_STR(joined(env), "SSL_PROTOCOL=none");
}

/* a block that EOF cut short keeps its complete entries only */
static void env_cut_entry(void)
{
  static const char blk[] = "A=1\0B=2";
  char *env[4] = { 0 };
  ucspitls_block_init(&b);
  ucspitls_block_keep(&b, keep, sizeof keep);
  feed(blk, sizeof blk - 1);
  CHECK(ucspitls_env(&b, env, 0, 4, 0) == 1);
  CHECK_STR(joined(env), "A=1");
}

int main(void)
{
  signal(SIGPIPE, SIG_IGN);
  RUN(block_basic);
  RUN(block_empty);
  RUN(block_unset_entries);
  RUN(block_split_bytewise);
  RUN(block_over_8k);
  RUN(block_value_sanitized);
  RUN(block_value_truncated);
  RUN(block_long_name);
  RUN(fd_variables);
  RUN(start_sslserver_style);
  RUN(start_s6_style);
  RUN(start_failed);
  RUN(start_peer_gone);
  RUN(start_stopped);
  RUN(start_timeout);
  RUN(start_shared_fd);
  RUN(start_toobig);
  RUN(env_sets_and_unsets);
  RUN(env_later_entry_wins);
  RUN(env_skip);
  RUN(env_no_room);
  RUN(env_over_cap);
  RUN(env_cut_entry);
  return check_failures != 0;
}
