/* proxy.c: options, environment, the fork, and the session: the poll loop
 * between the client and the smtpd until the SMTP engine hands the session
 * to the relay. With -e, also the smtpd after TLS and the wait for it. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "io.h"
#include "relay.h"
#include "smtp.h"
#include "ucspitls.h"

#define PROG "smtpd-starttls-proxy-io"
#define USAGE "usage: " PROG " [ -v verbosity ] [ -t timeout ] [ -T relaytimeout ] [ -r ] [ -a ] [ -e ] [ -L ] [ -B | -S ] [ -- ] smtpd [ args... ]"

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
static int smtpd_eof;        /* its output was read to EOF, or given up on at the drain bound */
static long long drainend;   /* from then on everything ends by this (0: no bound) */
static int drained;          /* and the session ended on it */
static char **smtpd_argv;
static struct sigaction pipeact, chldact, termact; /* as we were given them: the smtpds get them so */
/* -e: this process stays the one the super-server knows; the smtpds are
 * its children */
static int fresh;
static pid_t smtpd_pid;      /* the smtpd serving now */
static pid_t first_pid;      /* after TLS: the smtpd that greeted, told to go */
static int first_r = -1;     /* its output, left unread, so that its last reply finds a pipe */
static pid_t relay_pid;      /* with -S: the process that becomes s6-ioconnect */
static int term[2] = { -1, -1 }; /* from the handshake on, SIGTERM is a byte here */
static int chld[2] = { -1, -1 }; /* and SIGCHLD one here */
static volatile sig_atomic_t termed;
static int dying;            /* a fatal error is ending this process */
static char keepbuf[UCSPITLS_KEEPMAX]; /* the block's entries, the smtpd's after TLS */
#define ENVMAX 4096
static char *envbuf[ENVMAX];

/* the session as the end line tells it (-v 2) */
static char tag[80];         /* "pid N ip A": the super-server's pid and the client */
static long long started;
static const char *endwhy = "ended";
static char tlsdesc[200];    /* protocol and cipher; empty: plaintext */
static unsigned long long bytesin, bytesout; /* from and to the client, before the relay */
static int endlogged;

static void finale(void);
static void endline(int code, const char *smtpd);

static void smtpd_done(long long deadline);
static unsigned long drainbound(void);

/* Exits with every descriptor we opened closed, so a leak checker sees
 * only what we were given. */
static void leave(int code)
{
  /* with -e the smtpd is waited for: it must not die of a closed pipe */
  if (fresh) smtpd_done(io_deadline(drainbound()));
  if (smtpd_r >= 0) close(smtpd_r);
  if (smtpd_w >= 0) close(smtpd_w);
  if (execfail_r >= 0) close(execfail_r);
  smtpd_r = smtpd_w = execfail_r = -1;
  if (fresh) finale();
  endline(code, 0);
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
  n = snprintf(buf, sizeof buf - 1, "%s: %s: %s%s", PROG, kind, tag, tag[0] ? ": " : "");
  va_start(ap, fmt);
  n += vsnprintf(buf + n, sizeof buf - 1 - (size_t)n, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
  buf[n++] = '\n';
  while (write(2, buf, (size_t)n) < 0 && errno == EINTR) ;
}

static void die(int code);
#define fatal(code, ...) (say(0, "fatal", __VA_ARGS__), die(code), _exit(code))
#define warn(...) say(1, "warning", __VA_ARGS__)
#define info(...) say(2, "info", __VA_ARGS__)

/* After a fatal error: with -e the smtpd is still waited for, and its
 * status passed on, as without -e the super-server would see it. */
static void die(int code)
{
  endwhy = "fatal error";
  if (fresh && !dying) {
    dying = 1;
    leave(code);
  }
  endline(code, 0);
  _exit(code);
}

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
      case 'e': fresh = 1; flags |= SMTP_FRESH; break;
      case 'L': flags |= SMTP_GUARD; break;
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

/* UCSPITLS, which the access rules set per client (fixsmtpio and s/qmail
 * read it too), is this session's TLS policy, and wins over -r: "-"
 * STARTTLS not offered, empty the default, "!" TLS required; any other
 * value (s/qmail's "?" and "@" among them) requires TLS, with a warning.
 * It is ours: secret() keeps it from the smtpd, which might act on it
 * again. */
static unsigned policy(unsigned f)
{
  const char *v = getenv("UCSPITLS");
  int n;
  if (!v) return f;
  f &= ~(unsigned)SMTP_REQUIRETLS;
  if (!strcmp(v, "-")) f |= SMTP_NOTLS;
  else if (*v) {
    f |= SMTP_REQUIRETLS;
    for (n = 0; n < 32 && v[n] >= ' ' && v[n] < 127; n++) ;
    if (strcmp(v, "!") != 0) warn("UCSPITLS=%.*s%s is no policy known here: TLS required", n, v, v[n] ? "..." : "");
  }
  return f;
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

/* What the smtpd must not learn: our descriptors and our policy
 * (policy()), and the configuration of the TLS side, which s6-tlsd-io
 * (s6-networking) and sslserver (ucspi-ssl) read from the environment
 * they leave to the application: where the key and certificates live,
 * the key's password, the identity and root the TLS engine takes. */
static int secret(const char *s)
{
  static const char *const exact[] = {
    "SSLCTLFD", "SSLREADFD", "SSLWRITEFD", "UCSPITLS",
    /* s6-tlsd-io */
    "CERTFILE", "KEYFILE", "CAFILE", "CADIR", "TLS_UID", "TLS_GID",
    /* sslserver, beyond those */
    "CERTCHAINFILE", "CCAFILE", "CCAVERIFY", "DHFILE", "CIPHERS", "VERIFYDEPTH", "KEYPASS",
    "SSL_UID", "SSL_GID", "SSL_USER", "SSL_GROUP", "SSL_CHROOT"
  };
  size_t i, n = strcspn(s, "=");
  for (i = 0; i < sizeof exact / sizeof exact[0]; i++)
    if (strlen(exact[i]) == n && !strncmp(s, exact[i], n)) return 1;
  return !strncmp(s, "KEYFILE:", 8) || !strncmp(s, "CERTFILE:", 9);
}

/* The smtpd's environment, a new array: ours without what it must not
 * learn, and after TLS with -e, the block's entries applied. */
static char **smtpd_environ(const struct ucspitls_block *b)
{
  char **r;
  size_t n = 0;
  for (r = environ; *r; r++) {
    if (secret(*r)) continue;
    if (n == ENVMAX - 1) fatal(111, "more than %d environment variables", ENVMAX - 1);
    envbuf[n++] = *r;
  }
  envbuf[n] = 0;
  if (b && ucspitls_env(b, envbuf, n, ENVMAX, secret) < 0)
    warn("no room for the UCSPI-TLS variables beside %lu others: the smtpd gets none", (unsigned long)n);
  return envbuf;
}

static void closeabove2(int fd)
{
  if (fd > 2) close(fd);
}

/* "pid N ip A" for every log line: the pid the super-server logs (the
 * smtpd's without -e, which keeps ours; ours with it) and the client's
 * address as it set it, kept to what an address can hold. */
static void mktag(void)
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
  snprintf(tag, sizeof tag, n ? "pid %ld ip %s" : "pid %ld", (long)getpid(), addr);
}

/* One line per session at -v 2: how it went, how long, how many bytes,
 * and the exit status: code (-1: s6-ioconnect's to come), or with -e
 * smtpd, how the smtpd ended. */
static void endline(int code, const char *smtpd)
{
  char status[48];
  unsigned long long in = 0, out = 0, t;
  if (endlogged || !started) return;
  endlogged = 1;
  relay_counts(&in, &out);
  t = (unsigned long long)(io_now() - started);
  if (smtpd) snprintf(status, sizeof status, "smtpd %s", smtpd);
  else if (code < 0) snprintf(status, sizeof status, "exit s6-ioconnect's");
  else snprintf(status, sizeof status, "exit %d", code);
  info("end: %s, %s, %llu.%03llu s, %llu bytes in, %llu out, %s", tlsdesc[0] ? tlsdesc : "plaintext",
       endwhy, t / 1000, t % 1000, bytesin + in, bytesout + out, status);
}

/* A socket's two addresses, as names for it where fstat gives sockets no
 * inode (the BSDs); only IP sockets: unnamed local ones all look alike. */
static int sameends(int a, int b)
{
  int end;
  for (end = 0; end < 2; end++) {
    struct sockaddr_storage x, y;
    socklen_t lx = sizeof x, ly = sizeof y;
    int r = end ? getpeername(a, (struct sockaddr *)&x, &lx) : getsockname(a, (struct sockaddr *)&x, &lx);
    if (r < 0 || (end ? getpeername(b, (struct sockaddr *)&y, &ly) : getsockname(b, (struct sockaddr *)&y, &ly)) < 0)
      return 0;
    if (lx != ly || (x.ss_family != AF_INET && x.ss_family != AF_INET6) || memcmp(&x, &y, lx) != 0) return 0;
  }
  return 1;
}

/* Whether fd (with st) is the client connection that cfd (with c) is. */
static int sameconn(int fd, const struct stat *st, int cfd, const struct stat *c)
{
  if ((st->st_mode & S_IFMT) != (c->st_mode & S_IFMT)) return 0;
  if (st->st_ino || c->st_ino) return st->st_dev == c->st_dev && st->st_ino == c->st_ino;
  return S_ISSOCK(st->st_mode) && sameends(fd, cfd);
}

/* Copies of the client connection besides fds 0 and 1 (sslserver leaves
 * one) are found by what they refer to and closed: neither the smtpd nor
 * the relay may hold the raw connection. One poll(2) tells which of the
 * first FDSCAN descriptors are open. */
#define FDSCAN 256
static void close_strays(void)
{
  struct pollfd p[FDSCAN];
  struct stat c0, c1, st;
  long max = sysconf(_SC_OPEN_MAX);
  int n = max > 0 && max < FDSCAN ? (int)max : FDSCAN, i;
  if (fstat(0, &c0) < 0 || fstat(1, &c1) < 0) return;
  for (i = 3; i < n; i++) {
    p[i - 3].fd = i;
    p[i - 3].events = 0;
  }
  if (n <= 3 || poll(p, (nfds_t)(n - 3), 0) < 0) return;
  for (i = 3; i < n; i++) {
    if (p[i - 3].revents & POLLNVAL || i == ctlfd || i == readfd || i == writefd) continue;
    if (fstat(i, &st) < 0) continue;
    if (sameconn(i, &st, 0, &c0) || sameconn(i, &st, 1, &c1)) {
      close(i);
      info("closed fd %d, a copy of the client connection", i);
    }
  }
}

/* Our pipes never reach the smtpd or the relay by accident. */
static void mkpipe(int p[2])
{
  if (pipe(p) < 0) fatal(111, "pipe: %s", strerror(errno));
  fcntl(p[0], F_SETFD, FD_CLOEXEC);
  fcntl(p[1], F_SETFD, FD_CLOEXEC);
}

/* for our new pipes: no other status flag to keep */
static void nonblocking(int fd)
{
  fcntl(fd, F_SETFL, O_NONBLOCK);
}

/* Becomes the smtpd on pipes in and out, environment env. Every other
 * descriptor of ours is close-on-exec but the UCSPI-TLS ones, open until
 * the handshake. failfd carries one byte to the proxy if the exec fails,
 * so that the failure is logged once. */
static void smtpd_exec(char **env, int in, int out, int failfd)
{
  int e;
  /* the session's end is not this process's to tell, nor to wait for */
  endlogged = 1;
  fresh = 0;
  if (dup2(in, 0) < 0 || dup2(out, 1) < 0) fatal(111, "unable to set up the smtpd's stdin and stdout: %s", strerror(errno));
  closeabove2(ctlfd);
  closeabove2(readfd);
  closeabove2(writefd);
  sigaction(SIGPIPE, &pipeact, 0);
  sigaction(SIGCHLD, &chldact, 0);
  sigaction(SIGTERM, &termact, 0);
  /* POSIX: assigning environ is how a whole new environment is given to execvp */
  environ = env;
  execvp(smtpd_argv[0], smtpd_argv);
  e = errno;
  while (write(failfd, "x", 1) < 0 && errno == EINTR) ;
  fatal(111, "unable to exec %s: %s", smtpd_argv[0], strerror(e));
}

/* Makes the smtpd's pipes and forks; the smtpd is the parent (the pid the
 * super-server knows) unless child is set (-e). Returns in the proxy. */
static void start_smtpd(char **env, int child)
{
  int in[2], out[2], fail[2];
  pid_t pid;
  mkpipe(in);
  mkpipe(out);
  mkpipe(fail);
  pid = fork();
  if (pid < 0) fatal(111, "fork: %s", strerror(errno));
  if (child ? !pid : pid > 0) smtpd_exec(env, in[0], out[1], fail[1]);
  if (child) smtpd_pid = pid;
  close(in[0]);
  close(out[1]);
  close(fail[1]);
  execfail_r = fail[0];
  /* these pipe ends are ours alone: never blocking */
  nonblocking(in[1]);
  nonblocking(out[0]);
  smtpd_r = out[0];
  smtpd_w = in[1];
}

/* Reads and drops what fd holds, waiting for more until its EOF, the
 * deadline (one already past: no wait) or, if stoppable, a SIGTERM that
 * ends the session (-e); returns how many bytes. */
static size_t drop(int fd, long long deadline, int stoppable)
{
  char junk[512];
  size_t dropped = 0;
  for (;;) {
    struct pollfd p[2];
    ssize_t n;
    int r;
    p[0].fd = fd; p[0].events = POLLIN;
    p[1].fd = stoppable ? term[0] : -1; p[1].events = POLLIN;
    r = poll(p, 2, io_left(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0 || p[1].revents) break;
    n = read(fd, junk, sizeof junk);
    if (!n || (n < 0 && !again())) break;
    if (n > 0) dropped += (size_t)n;
  }
  return dropped;
}

/* The smtpd gets EOF and its output is read to its end by deadline, once:
 * even after a SIGTERM, so that it does not die of a closed pipe. */
static void smtpd_done(long long deadline)
{
  if (smtpd_w >= 0) { close(smtpd_w); smtpd_w = -1; }
  if (smtpd_r >= 0 && !smtpd_eof) drop(smtpd_r, deadline, 0);
  smtpd_eof = 1;
}

/* After the engine's last word, as the relay does: the smtpd is done
 * with, then the client gets EOF and its side is read to its end (no more
 * after a SIGTERM), all by deadline. Under sslserver this process's exit
 * closes the control socket and the super-server kills the smtpd then; a
 * client that closes after our EOF leaves the smtpd time to be gone. */
static void linger(long long deadline)
{
  smtpd_done(deadline);
  relay_eof(1, 0);
  drop(0, deadline, 1);
}

static void finish(void)
{
  const char *out;
  size_t n = smtp_client_output(&engine, &out), done = 0;
  int code = smtp_exitcode(&engine);
  long long deadline = smtpd_ended ? drainend : io_deadline(drainbound());
  char c;
  io_writeall(1, out, n, &done, deadline);
  bytesout += done;
  linger(deadline);
  switch (smtp_why(&engine)) {
  case SMTP_WHY_SERVERBROKEN: fatal(1, "the smtpd sent a line that is not an SMTP reply");
  case SMTP_WHY_SERVERLONG: fatal(1, "the smtpd sent a reply line longer than %d bytes", SMTP_REPLYMAX);
  case SMTP_WHY_GREETING:
    endwhy = "the smtpd after TLS refused";
    warn("the smtpd after TLS refused the session: closing");
    break;
  case SMTP_WHY_ERRORS:
    endwhy = "too many malformed lines";
    info("client sent too many malformed lines: closing");
    break;
  case SMTP_WHY_CONTENT:
    endwhy = "message refused for its content";
    warn("message refused for %s in its content (SMTP smuggling?): the smtpd's input ended without the final dot",
         smtp_badcontent(&engine));
    break;
  case SMTP_WHY_TIMEOUT:
    endwhy = drained ? "drain bound" : "idle timeout";
    if (drained) warn("the client's side still open %lu ms after the smtpd's output ended: closing", drainbound());
    else warn("no traffic for %lu ms: closing", timeout);
    break;
  case SMTP_WHY_SERVER421: endwhy = "the smtpd answered 421"; break;
  case SMTP_WHY_QUIT: endwhy = "quit"; break;
  case SMTP_WHY_CLIENTEOF: endwhy = "client closed without QUIT"; break;
  default:
    endwhy = "the smtpd closed";
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

static void onsignal(int sig)
{
  int e = errno;
  ssize_t r;
  if (sig == SIGTERM) termed = 1;
  r = write(sig == SIGTERM ? term[1] : chld[1], "", 1);
  (void)r;
  errno = e;
}

static void catch(int sig, int p[2])
{
  struct sigaction sa;
  mkpipe(p);
  nonblocking(p[0]);
  nonblocking(p[1]);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = onsignal;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, 0);
}

/* -e, after TLS: the first smtpd is told to go, and a new one starts with
 * the block's variables. */
static void renew(const struct ucspitls_block *b)
{
  if (b->over)
    warn("the UCSPI-TLS information block is over %lu bytes: the smtpd after TLS gets none of its variables",
         UCSPITLS_KEEPMAX);
  /* a full pipe means it reads nothing, and EOF says the same */
  ssize_t r = write(smtpd_w, "QUIT\r\n", 6);
  (void)r;
  close(smtpd_w);
  close(execfail_r);
  first_r = smtpd_r;
  first_pid = smtpd_pid;
  smtpd_r = smtpd_w = execfail_r = -1;
  smtpd_ended = smtpd_eof = 0;
  drainend = 0;
  start_smtpd(smtpd_environ(b), 1);
}

static void handshake(void)
{
  struct ucspitls_block b;
  const char *proto, *cipher;
  size_t dropped;
  int r, w;
  enum ucspitls_result res;
  ucspitls_block_init(&b);
  /* -e: sslserver's SIGTERM for a failed handshake, or at a TLS session's
   * end, must leave this process the time to wait for the smtpd */
  if (fresh) {
    ucspitls_block_keep(&b, keepbuf, sizeof keepbuf);
    catch(SIGTERM, term);
  }
  res = ucspitls_start(ctlfd, ctlfd == readfd, io_deadline(timeout), term[0], &b);
  if (res == UCSPITLS_TOOBIG) fatal(1, "the UCSPI-TLS information block is over %lu bytes", UCSPITLS_BLOCKMAX);
  if (res == UCSPITLS_ERROR) fatal(111, "unable to talk to the UCSPI-TLS server: %s", strerror(errno));
  /* what clients do, scanners most of all, is no warning for the operator */
  if (res == UCSPITLS_FAILED || res == UCSPITLS_STOPPED) {
    endwhy = "TLS handshake failed";
    info("TLS handshake failed");
    leave(1);
  }
  if (res == UCSPITLS_GONE) {
    endwhy = "no UCSPI-TLS server";
    warn("the UCSPI-TLS server is gone before the handshake");
    leave(111);
  }
  if (res == UCSPITLS_TIMEOUT) {
    endwhy = "TLS handshake timed out";
    info("timed out waiting for the TLS handshake");
    leave(99);
  }
  proto = b.protocol[0] ? b.protocol : "unknown";
  cipher = b.cipher[0] ? b.cipher : "unknown";
  snprintf(tlsdesc, sizeof tlsdesc, "%s %s", proto, cipher);
  info("TLS started: protocol %s, cipher %s", proto, cipher);
  if (ctlfd != readfd && ctlfd != writefd) close(ctlfd);
  ctlfd = -1;
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
  readfd = writefd = -1;
  /* RFC 3207 4.2: nothing from before TLS counts, in either direction; an
   * EOF seen here is seen again by the session */
  dropped = drop(smtpd_r, io_now(), 0);
  if (fresh) renew(&b);
  dropped += smtp_tls_started(&engine);
  if (dropped) info("discarded %lu bytes the smtpd sent before the TLS handshake", (unsigned long)dropped);
}

static void relay(void)
{
  struct smtp_leftover l;
  enum relay_result res;
  int i, sr = smtpd_r, sw = smtpd_w;
  smtp_leftover(&engine, &l);
  for (i = 0; i < 2; i++)
    if (relay_preload(RELAY_TOCLIENT, l.toclient[i], l.toclientlen[i]) < 0
        || relay_preload(RELAY_TOSERVER, l.toserver[i], l.toserverlen[i]) < 0)
      fatal(111, "relay buffers too small for the leftovers");
  if (ioconnect && !relay_findable()) {
    info("s6-ioconnect is not in PATH: using the built-in relay");
    ioconnect = 0;
  }
  if (ioconnect && fresh) {
    /* this process waits for the smtpd: another becomes s6-ioconnect, and
     * a SIGTERM meant for it must not reach our handler in between */
    sigset_t set, old;
    pid_t pid;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, &old);
    pid = fork();
    if (pid < 0) fatal(111, "fork: %s", strerror(errno));
    if (pid) {
      sigprocmask(SIG_SETMASK, &old, 0);
      relay_pid = pid;
      /* the relay's descriptors are its own: ours would keep EOF from passing */
      close(0);
      close(1);
      close(smtpd_r);
      close(smtpd_w);
      smtpd_r = smtpd_w = -1;
      endwhy = "s6-ioconnect relayed the rest";
      leave(0);
    }
    fresh = 0;
    endlogged = 1; /* the waiting process tells the end */
    sigaction(SIGTERM, &termact, 0);
    sigprocmask(SIG_SETMASK, &old, 0);
  }
  if (ioconnect) {
    /* s6-ioconnect starts with empty buffers: the leftovers go first */
    if (!relay_flush(1, sw, io_deadline(relaytimeout))) {
      int told = endlogged;
      /* the smtpd's pipes are the ones it must keep */
      fcntl(sr, F_SETFD, 0);
      fcntl(sw, F_SETFD, 0);
      endwhy = "s6-ioconnect relays the rest";
      endline(-1, 0);
      relay_exec(sr, sw, relaytimeout);
      fcntl(sr, F_SETFD, FD_CLOEXEC);
      fcntl(sw, F_SETFD, FD_CLOEXEC);
      endlogged = told; /* it found s6-ioconnect gone since: the end is ours to tell */
      info("unable to exec s6-ioconnect: %s: using the built-in relay", strerror(errno));
    } else if (errno == ETIMEDOUT) {
      warn("relay: the engine's last bytes found no reader for %lu ms: closing", relaytimeout);
      leave(99);
    }
  }
  res = relay_run(0, 1, sr, sw, relaytimeout, drainbound(), fresh ? term[0] : -1);
  switch (res) {
  case RELAY_ERROR: fatal(111, "relay: %s", strerror(errno));
  case RELAY_IDLE:
    endwhy = "relay idle timeout";
    warn("relay: no traffic for %lu ms: closing", relaytimeout);
    break;
  case RELAY_STALLED:
    endwhy = "the client read nothing";
    warn("relay: the client read nothing for %lu ms: closing", relaytimeout);
    break;
  case RELAY_DRAIN:
    endwhy = "drain bound";
    warn("relay: the client's side still open %lu ms after the smtpd's output ended: closing", drainbound());
    break;
  case RELAY_OK: endwhy = termed ? "SIGTERM" : "relayed to the end"; break;
  }
  leave(res == RELAY_OK ? 0 : 99);
}

/* The smtpd's output has ended: the drain bound starts, once. */
static void smtpd_end(void)
{
  if (smtpd_ended) return;
  smtpd_ended = 1;
  drainend = io_deadline(drainbound());
}

/* -e, after TLS: the super-server's SIGTERM ends the session: what the
 * client was owed goes out if it can at once, the smtpd gets EOF and is
 * waited for. */
static void terminated(void)
{
  const char *out;
  size_t n = smtp_client_output(&engine, &out), done = 0;
  endwhy = "SIGTERM";
  info("SIGTERM: ending the session");
  io_writeall(1, out, n, &done, io_now());
  bytesout += done;
  linger(io_deadline(drainbound()));
  leave(0);
}

static void session(void)
{
  long long deadline = io_deadline(timeout);
  for (;;) {
    struct pollfd p[5];
    const char *out, *sout = 0;
    char *cin = 0, *sin = 0;
    size_t cout, soutn, croom, sroom;
    int moved = 0, r, sr, sw;
    enum smtp_status st = smtp_status(&engine);
    cout = smtp_client_output(&engine, &out);
    if (st == SMTP_CLOSE) finish();
    if (st == SMTP_RELAY) relay();
    if (st == SMTP_STARTTLS && !cout) { handshake(); deadline = io_deadline(timeout); continue; }
    /* checked on every turn: a client that keeps sending keeps poll from timing out */
    if (smtpd_ended && drainend && !io_left(drainend)) { drained = 1; smtp_timeout(&engine); continue; }
    if (smtpd_w >= 0 && smtp_server_done(&engine)) { close(smtpd_w); smtpd_w = -1; }
    sr = smtpd_r;
    sw = smtpd_w;
    croom = smtp_client_room(&engine, &cin);
    sroom = smtp_server_room(&engine, &sin);
    soutn = sw >= 0 ? smtp_server_output(&engine, &sout) : 0;
    p[0].fd = croom ? 0 : -1; p[0].events = POLLIN;
    p[1].fd = cout ? 1 : -1; p[1].events = POLLOUT;
    /* watched even when it is not read, so that its hang-up is seen while
     * the client holds our buffers full */
    p[2].fd = sroom || !smtpd_ended ? sr : -1; p[2].events = sroom ? POLLIN : 0;
    p[3].fd = soutn ? sw : -1; p[3].events = POLLOUT;
    p[4].fd = term[0]; p[4].events = POLLIN;
    r = poll(p, 5, io_left(io_sooner(deadline, smtpd_ended ? drainend : 0)));
    if (r < 0) {
      if (errno == EINTR) continue;
      fatal(111, "poll: %s", strerror(errno));
    }
    if (!r) {
      if (!io_left(deadline)) smtp_timeout(&engine);
      continue;
    }
    if (p[4].revents) terminated();
    if (p[1].revents) {
      /* fd 1 may be the super-server's socket, left blocking: small writes */
      ssize_t w = write(1, out, cout > 512 ? 512 : cout);
      if (w > 0) { smtp_client_sent(&engine, (size_t)w); moved = 1; bytesout += (unsigned long long)w; }
      else if (w < 0 && !again()) {
        endwhy = "client connection lost";
        info("client connection lost: %s", strerror(errno));
        leave(1);
      }
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
        bytesin += (unsigned long long)n;
        smtp_client_input(&engine, (size_t)n);
        moved = 1;
        /* the pipe is ours and non-blocking: pass the bytes on at once, so
         * that the smtpd starts on them one poll sooner (message content) */
        if (sw >= 0 && (soutn = smtp_server_output(&engine, &sout)) > 0) {
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

/* Empties a self-pipe. */
static void drain(int fd)
{
  char junk[64];
  while (fd >= 0 && read(fd, junk, sizeof junk) > 0) ;
}

/* How long the first smtpd has after its SIGTERM before SIGKILL. */
#define FIRSTGRACE 1000

/* -e: the end of this process, the one the super-server knows: after
 * the smtpd, the relay and the first smtpd have ended, as the smtpd ended.
 * A SIGTERM meanwhile is passed on, to the relay first (its end is the
 * smtpd's EOF), as it would have reached the smtpd without -e. SIGCHLD
 * and SIGTERM both arrive as bytes polled for: neither can slip between a
 * check and the wait. */
static void finale(void)
{
  int status = 0, st;
  long long firstend = 0;
  /* a SIGTERM so far has been served: it ended the session */
  termed = 0;
  drain(term[0]);
  if (first_r >= 0) close(first_r);
  first_r = -1;
  for (;;) {
    struct pollfd p[2];
    pid_t pid, to;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
      if (pid == smtpd_pid) { status = st; smtpd_pid = 0; }
      if (pid == relay_pid) relay_pid = 0;
      if (pid == first_pid) first_pid = 0;
    }
    if (pid < 0 && errno == ECHILD) smtpd_pid = relay_pid = first_pid = 0;
    else if (pid < 0 && errno != EINTR) fatal(111, "waitpid: %s", strerror(errno));
    if (!smtpd_pid && !relay_pid && !first_pid) break;
    /* the first smtpd was told QUIT long ago: one that lingers is ended */
    if (first_pid && !firstend) {
      kill(first_pid, SIGTERM);
      firstend = io_deadline(FIRSTGRACE);
    } else if (first_pid && !io_left(firstend)) {
      kill(first_pid, SIGKILL);
      firstend = io_deadline(FIRSTGRACE);
    }
    to = relay_pid ? relay_pid : smtpd_pid;
    if (termed && to > 0) kill(to, SIGTERM);
    termed = 0;
    p[0].fd = term[0]; p[0].events = POLLIN;
    p[1].fd = chld[0]; p[1].events = POLLIN;
    if (poll(p, 2, first_pid ? io_left(firstend) : -1) < 0 && errno != EINTR)
      fatal(111, "poll: %s", strerror(errno));
    drain(term[0]);
    drain(chld[0]);
  }
  {
    char how[32];
    if (WIFSIGNALED(status)) snprintf(how, sizeof how, "signal %d", WTERMSIG(status));
    else snprintf(how, sizeof how, "exit %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    endline(0, how);
  }
  if (WIFSIGNALED(status)) {
    /* the same death, without a core file of ours */
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = 0;
    setrlimit(RLIMIT_CORE, &rl);
    signal(WTERMSIG(status), SIG_DFL);
    raise(WTERMSIG(status));
  }
  _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 111);
}

int main(int argc, char **argv)
{
  (void)argc;
  smtpd_argv = argv = options(argv);
  mktag();
  if (!*argv) usage();
  flags = policy(flags);
  ctlfd = getfd("SSLCTLFD");
  readfd = getfd("SSLREADFD");
  writefd = getfd("SSLWRITEFD");
  if (fcntl(0, F_GETFD) < 0 || fcntl(1, F_GETFD) < 0)
    fatal(100, "fds 0 and 1 must be the client connection");
  if (fcntl(2, F_GETFD) < 0 && open("/dev/null", O_WRONLY) != 2)
    fatal(111, "unable to open /dev/null as fd 2: %s", strerror(errno));
  sigaction(SIGPIPE, 0, &pipeact);
  sigaction(SIGCHLD, 0, &chldact);
  sigaction(SIGTERM, 0, &termact);
  /* -e: this process waits for its smtpds, whatever SIGCHLD it was given */
  if (fresh) catch(SIGCHLD, chld);
  close_strays();
  started = io_now();
  start_smtpd(smtpd_environ(0), fresh);
  signal(SIGPIPE, SIG_IGN);
  smtp_init(&engine, flags);
  session();
  return 0;
}
