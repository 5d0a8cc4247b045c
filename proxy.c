/* proxy.c: options, environment, the fork, and the session: the poll loop
 * between the client and the smtpd until the SMTP engine hands the session
 * to the relay. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io.h"
#include "relay.h"
#include "smtp.h"
#include "ucspitls.h"

#define PROG "smtpd-starttls-proxy-io"
#define USAGE "usage: " PROG " [ -v verbosity ] [ -t timeout ] [ -T relaytimeout ] [ -r ] [ -a ] [ -B | -S ] [ -- ] smtpd [ args... ]"

extern char **environ;

static unsigned long verbosity = 1;
static unsigned long timeout = 300000;
/* RFC 5321 4.5.3.2.6: a server waits 10 minutes for the end of DATA, the
 * longest wait it owes a client; the relay cannot tell a command from data */
static unsigned long relaytimeout = 600000;
static int relaytimeout_given;
static int ioconnect;
static unsigned flags;
static int ctlfd, readfd, writefd;
static struct smtp engine;
static int smtpd_r = -1, smtpd_w = -1; /* our ends of the smtpd's pipes */
static int execfail_r = -1; /* a byte here: the exec failed, and the parent said so */
static int smtpd_ended;      /* the smtpd's output was seen to end (EOF or hang-up) */
static int smtpd_eof;        /* and its EOF was read: nothing more can come */
static long long drainend;   /* from then on everything ends by this (0: no bound) */
static int drained;          /* and the session ended on it */

/* Exits with every descriptor we opened closed, so a leak checker sees
 * only what we were given. */
static void leave(int code)
{
  if (smtpd_r >= 0) close(smtpd_r);
  if (smtpd_w >= 0) close(smtpd_w);
  if (execfail_r >= 0) close(execfail_r);
  _exit(code);
}

static int again(void)
{
  return errno == EINTR || errno == EAGAIN;
}

/* One line per event, written at once so lines from both processes do not mix. */
static void say(unsigned long level, const char *kind, const char *fmt, ...)
{
  char buf[512];
  int n;
  va_list ap;
  if (verbosity < level) return;
  n = snprintf(buf, sizeof buf - 1, "%s: %s: ", PROG, kind);
  va_start(ap, fmt);
  n += vsnprintf(buf + n, sizeof buf - 1 - (size_t)n, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
  buf[n++] = '\n';
  while (write(2, buf, (size_t)n) < 0 && errno == EINTR) ;
}

#define fatal(code, ...) (say(0, "fatal", __VA_ARGS__), _exit(code))
#define warn(...) say(1, "warning", __VA_ARGS__)
#define info(...) say(2, "info", __VA_ARGS__)

static void usage(void)
{
  say(0, "fatal", "%s", USAGE);
  _exit(100);
}

/* The longest timeout: poll(2) waits at most this long in one call, and
 * the clock's milliseconds plus this much are far from overflowing. */
#define TIMEOUTMAX 2147483647UL

static unsigned long number(const char *s, char opt, unsigned long max)
{
  unsigned long v = 0;
  if (!s || !*s) usage();
  for (; *s; s++) {
    unsigned long d = (unsigned long)(*s - '0');
    if (*s < '0' || *s > '9' || v > (max - d) / 10) {
      if (opt == 'v') say(0, "fatal", "-v wants a decimal level");
      else say(0, "fatal", "-%c wants a decimal number of milliseconds up to %lu", opt, max);
      _exit(100);
    }
    v = v * 10 + d;
  }
  return v;
}

/* Once the smtpd's output has ended, everything ends within this. */
static unsigned long drainbound(void)
{
  if (relaytimeout_given) return relaytimeout;
  return timeout ? timeout : relaytimeout;
}

/* POSIX getopt would do, but GNU's permutes arguments: the smtpd's own
 * options must never be taken for ours. */
static char **options(char **argv)
{
  for (argv++; *argv && argv[0][0] == '-' && argv[0][1]; argv++) {
    const char *s = *argv + 1;
    if (!strcmp(*argv, "--")) return argv + 1;
    for (; *s; s++) {
      char c = *s;
      switch (c) {
      case 'r': flags |= SMTP_REQUIRETLS; break;
      case 'a': flags |= SMTP_PLAINAUTH; break;
      case 'B': ioconnect = 0; break;
      case 'S': ioconnect = 1; break;
      case 'v': case 't': case 'T': {
        unsigned long v;
        const char *arg = s[1] ? s + 1 : *++argv;
        v = number(arg, c, c == 'v' ? ~0UL : TIMEOUTMAX);
        if (c == 'v') verbosity = v;
        else if (c == 't') timeout = v;
        else { relaytimeout = v; relaytimeout_given = 1; }
        s = arg + strlen(arg) - 1;
        break;
      }
      default: usage();
      }
    }
  }
  return argv;
}

static int getfd(const char *name)
{
  const char *problem, *v;
  int fd;
  if (!ucspitls_fd(name, &fd, &problem)) return fd;
  v = getenv(name);
  if (v && *v) fatal(100, "%s=%.32s %s", name, v, problem);
  fatal(100, "%s %s", name, problem);
  return -1;
}

/* What the smtpd must not learn: our descriptors, and where the TLS
 * server's key and certificates live. */
static int secret(const char *s)
{
  static const char *const exact[] = {
    "SSLCTLFD", "SSLREADFD", "SSLWRITEFD", "CERTFILE", "KEYFILE", "CAFILE",
    "CADIR", "TLS_UID", "TLS_GID"
  };
  size_t i, n = strcspn(s, "=");
  for (i = 0; i < sizeof exact / sizeof exact[0]; i++)
    if (strlen(exact[i]) == n && !strncmp(s, exact[i], n)) return 1;
  return !strncmp(s, "KEYFILE:", 8) || !strncmp(s, "CERTFILE:", 9);
}

static void cleanenv(void)
{
  char **r, **w;
  for (r = w = environ; *r; r++)
    if (!secret(*r)) *w++ = *r;
  *w = 0;
}

static void closeabove2(int fd)
{
  if (fd > 2) close(fd);
}

/* The parent becomes the smtpd, keeping the pid the super-server knows.
 * p holds the pipe ends to close; p[5], close-on-exec, carries one byte to
 * the child if the exec fails, so that the failure is logged once. */
static void smtpd(char **argv, int in, int out, int p[6])
{
  int i, e;
  if (dup2(in, 0) < 0 || dup2(out, 1) < 0) fatal(111, "unable to set up the smtpd's stdin and stdout: %s", strerror(errno));
  for (i = 0; i < 5; i++) close(p[i]);
  closeabove2(ctlfd);
  closeabove2(readfd);
  closeabove2(writefd);
  cleanenv();
  execvp(argv[0], argv);
  e = errno;
  while (write(p[5], "x", 1) < 0 && errno == EINTR) ;
  fatal(111, "unable to exec %s: %s", argv[0], strerror(e));
}

/* Reads and drops what fd holds, waiting for more until its EOF or the
 * deadline (one already past: no wait); returns how many bytes. */
static size_t drop(int fd, long long deadline)
{
  char junk[512];
  size_t dropped = 0;
  while (io_wait(fd, POLLIN, deadline) > 0) {
    ssize_t n = read(fd, junk, sizeof junk);
    if (!n || (n < 0 && !again())) break;
    if (n > 0) dropped += (size_t)n;
  }
  return dropped;
}

/* After the engine's last word, as the relay does: the smtpd gets EOF and
 * its output is read to its end, then the client gets EOF and its side is
 * read to its end, all by deadline. Under sslserver this process's exit
 * closes the control socket and the super-server kills the smtpd then; a
 * client that closes after our EOF leaves the smtpd time to be gone. */
static void linger(int sr, long long deadline)
{
  if (smtpd_w >= 0) { close(smtpd_w); smtpd_w = -1; }
  if (!smtpd_eof) drop(sr, deadline);
  relay_eof(1, 0);
  drop(0, deadline);
}

static void finish(int sr)
{
  const char *out;
  size_t n = smtp_client_output(&engine, &out), done = 0;
  int code = smtp_exitcode(&engine);
  long long deadline = smtpd_ended ? drainend : io_deadline(drainbound());
  char c;
  io_writeall(1, out, n, &done, deadline);
  linger(sr, deadline);
  switch (smtp_why(&engine)) {
  case SMTP_WHY_SERVERBROKEN: fatal(1, "the smtpd sent a line that is not an SMTP reply");
  case SMTP_WHY_SERVERLONG: fatal(1, "the smtpd sent a reply line longer than %d bytes", SMTP_REPLYMAX);
  case SMTP_WHY_ERRORS: warn("client sent too many malformed lines: closing"); break;
  case SMTP_WHY_TIMEOUT:
    if (drained) warn("the client's side still open %lu ms after the smtpd's output ended: closing", drainbound());
    else warn("no traffic for %lu ms: closing", timeout);
    break;
  default:
    /* the exec failure, if that is what it was, is logged already */
    if (code && read(execfail_r, &c, 1) != 1) warn("the smtpd closed with replies still owed");
    break;
  }
  leave(code);
}

static void move_to(int from, int to)
{
  if (from == to) return;
  if (dup2(from, to) < 0) fatal(111, "unable to move the TLS descriptors: %s", strerror(errno));
}

static void handshake(int sr)
{
  struct ucspitls_block b;
  size_t dropped;
  int r, w;
  enum ucspitls_result res = ucspitls_start(ctlfd, ctlfd == readfd, io_deadline(timeout), &b);
  if (res == UCSPITLS_TOOBIG) fatal(1, "the UCSPI-TLS information block is over %lu bytes", UCSPITLS_BLOCKMAX);
  if (res == UCSPITLS_ERROR) fatal(111, "unable to talk to the UCSPI-TLS server: %s", strerror(errno));
  if (res == UCSPITLS_FAILED) { warn("TLS handshake failed"); leave(1); }
  if (res == UCSPITLS_TIMEOUT) { warn("timed out waiting for the TLS handshake"); leave(99); }
  info("TLS started: protocol %s, cipher %s", b.protocol[0] ? b.protocol : "unknown",
       b.cipher[0] ? b.cipher : "unknown");
  if (ctlfd != readfd && ctlfd != writefd) close(ctlfd);
  /* the TLS pipes become fds 0/1; the raw socket is the TLS engine's now */
  r = fcntl(readfd, F_DUPFD, 3);
  w = fcntl(writefd, F_DUPFD, 3);
  if (r < 0 || w < 0) fatal(111, "unable to move the TLS descriptors: %s", strerror(errno));
  move_to(r, 0);
  move_to(w, 1);
  close(r);
  close(w);
  closeabove2(readfd);
  if (writefd != readfd) closeabove2(writefd);
  /* RFC 3207 4.2: nothing from before TLS counts, in either direction; an
   * EOF seen here is seen again by the session */
  dropped = drop(sr, io_now()) + smtp_tls_started(&engine);
  if (dropped) info("discarded %lu bytes the smtpd sent before the TLS handshake", (unsigned long)dropped);
}

static void relay(int sr, int sw)
{
  struct smtp_leftover l;
  enum relay_result res;
  int i;
  smtp_leftover(&engine, &l);
  for (i = 0; i < 2; i++)
    if (relay_preload(RELAY_TOCLIENT, l.toclient[i], l.toclientlen[i]) < 0
        || relay_preload(RELAY_TOSERVER, l.toserver[i], l.toserverlen[i]) < 0)
      fatal(111, "relay buffers too small for the leftovers");
  if (ioconnect) {
    /* s6-ioconnect starts with empty buffers: the leftovers go first */
    if (!relay_flush(1, sw, io_deadline(relaytimeout))) {
      relay_exec(sr, sw, relaytimeout);
      info("unable to exec s6-ioconnect: %s: using the built-in relay", strerror(errno));
    } else if (errno == ETIMEDOUT) {
      warn("relay: the engine's last bytes found no reader for %lu ms: closing", relaytimeout);
      leave(99);
    }
  }
  res = relay_run(0, 1, sr, sw, relaytimeout, drainbound());
  switch (res) {
  case RELAY_ERROR: fatal(111, "relay: %s", strerror(errno));
  case RELAY_IDLE: warn("relay: no traffic for %lu ms: closing", relaytimeout); break;
  case RELAY_STALLED: warn("relay: the client read nothing for %lu ms: closing", relaytimeout); break;
  case RELAY_DRAIN:
    warn("relay: the client's side still open %lu ms after the smtpd's output ended: closing", drainbound());
    break;
  case RELAY_OK: break;
  }
  leave(res == RELAY_OK ? 0 : 99);
}


/* The earlier of two deadlines, 0 being none. */
static long long sooner(long long a, long long b)
{
  return !a ? b : !b || a < b ? a : b;
}

/* The smtpd's output has ended: the drain bound starts, once. */
static void smtpd_end(void)
{
  if (smtpd_ended) return;
  smtpd_ended = 1;
  drainend = io_deadline(drainbound());
}

static void session(int sr, int sw)
{
  long long deadline = io_deadline(timeout);
  int swopen = 1;
  for (;;) {
    struct pollfd p[4];
    const char *out, *sout = 0;
    char *cin = 0, *sin = 0;
    size_t cout, soutn, croom, sroom;
    int moved = 0, r;
    enum smtp_status st = smtp_status(&engine);
    cout = smtp_client_output(&engine, &out);
    if (st == SMTP_CLOSE) finish(sr);
    if (st == SMTP_RELAY) relay(sr, sw);
    if (st == SMTP_STARTTLS && !cout) { handshake(sr); deadline = io_deadline(timeout); continue; }
    /* checked on every turn: a client that keeps sending keeps poll from timing out */
    if (smtpd_ended && drainend && !io_left(drainend)) { drained = 1; smtp_timeout(&engine); continue; }
    if (swopen && smtp_server_done(&engine)) { close(sw); swopen = 0; smtpd_w = -1; }
    croom = smtp_client_room(&engine, &cin);
    sroom = smtp_server_room(&engine, &sin);
    soutn = swopen ? smtp_server_output(&engine, &sout) : 0;
    p[0].fd = croom ? 0 : -1; p[0].events = POLLIN;
    p[1].fd = cout ? 1 : -1; p[1].events = POLLOUT;
    /* watched even when it is not read, so that its hang-up is seen while
     * the client holds our buffers full */
    p[2].fd = sroom || !smtpd_ended ? sr : -1; p[2].events = sroom ? POLLIN : 0;
    p[3].fd = soutn ? sw : -1; p[3].events = POLLOUT;
    r = poll(p, 4, io_left(sooner(deadline, smtpd_ended ? drainend : 0)));
    if (r < 0) {
      if (errno == EINTR) continue;
      fatal(111, "poll: %s", strerror(errno));
    }
    if (!r) {
      if (!io_left(deadline)) smtp_timeout(&engine);
      continue;
    }
    if (p[1].revents) {
      /* fd 1 may be the super-server's socket, left blocking: small writes */
      ssize_t w = write(1, out, cout > 512 ? 512 : cout);
      if (w > 0) { smtp_client_sent(&engine, (size_t)w); moved = 1; }
      else if (w < 0 && !again()) { info("client connection lost: %s", strerror(errno)); leave(1); }
    }
    if (p[3].revents) {
      ssize_t w = write(sw, sout, soutn);
      if (w > 0) { smtp_server_sent(&engine, (size_t)w); moved = 1; }
      else if (w < 0 && !again()) smtp_server_sent(&engine, soutn); /* gone: its EOF follows */
    }
    /* the room is asked again right before each read: writing may have
     * changed it, and content is read straight into the smtpd's buffer */
    if (p[0].revents && (croom = smtp_client_room(&engine, &cin)) > 0) {
      ssize_t n = read(0, cin, croom);
      if (n > 0) {
        smtp_client_input(&engine, (size_t)n);
        moved = 1;
        /* the pipe is ours and non-blocking: pass the bytes on at once, so
         * that the smtpd starts on them one poll sooner (message content) */
        if (swopen && (soutn = smtp_server_output(&engine, &sout)) > 0) {
          ssize_t w = write(sw, sout, soutn);
          if (w > 0) smtp_server_sent(&engine, (size_t)w);
        }
      }
      else if (!n || !again()) smtp_client_eof(&engine);
    }
    if (p[2].revents & (POLLHUP | POLLERR)) smtpd_end();
    if (p[2].revents && (sroom = smtp_server_room(&engine, &sin)) > 0) {
      ssize_t n = read(sr, sin, sroom);
      if (n > 0) { smtp_server_input(&engine, (size_t)n); moved = 1; }
      else if (!n || !again()) { smtpd_end(); smtpd_eof = !n; smtp_server_eof(&engine); }
    }
    if (moved) deadline = io_deadline(timeout);
  }
}

int main(int argc, char **argv)
{
  int toserver[2], fromserver[2], execfail[2], p[6];
  pid_t pid;
  (void)argc;
  argv = options(argv);
  if (!*argv) usage();
  ctlfd = getfd("SSLCTLFD");
  readfd = getfd("SSLREADFD");
  writefd = getfd("SSLWRITEFD");
  if (fcntl(0, F_GETFD) < 0 || fcntl(1, F_GETFD) < 0)
    fatal(100, "fds 0 and 1 must be the client connection");
  if (fcntl(2, F_GETFD) < 0 && open("/dev/null", O_WRONLY) != 2)
    fatal(111, "unable to open /dev/null as fd 2: %s", strerror(errno));
  if (pipe(toserver) < 0 || pipe(fromserver) < 0 || pipe(execfail) < 0)
    fatal(111, "pipe: %s", strerror(errno));
  fcntl(execfail[0], F_SETFD, FD_CLOEXEC);
  fcntl(execfail[1], F_SETFD, FD_CLOEXEC);
  p[0] = toserver[0]; p[1] = toserver[1]; p[2] = fromserver[0]; p[3] = fromserver[1];
  p[4] = execfail[0]; p[5] = execfail[1];
  pid = fork();
  if (pid < 0) fatal(111, "fork: %s", strerror(errno));
  if (pid) smtpd(argv, toserver[0], fromserver[1], p);
  signal(SIGPIPE, SIG_IGN);
  close(toserver[0]);
  close(fromserver[1]);
  close(execfail[1]);
  execfail_r = execfail[0];
  /* these pipe ends are ours alone: never blocking (new pipes: no other
   * status flag to keep) */
  fcntl(toserver[1], F_SETFL, O_NONBLOCK);
  fcntl(fromserver[0], F_SETFL, O_NONBLOCK);
  smtpd_r = fromserver[0];
  smtpd_w = toserver[1];
  smtp_init(&engine, flags);
  session(fromserver[0], toserver[1]);
  return 0;
}
