/* smtpd.c: the smtpd's process (see smtpd.h). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "end.h"
#include "io.h"
#include "log.h"
#include "signals.h"
#include "smtpd.h"

extern char **environ;

static pid_t pid;            /* the smtpd serving now: our parent, or (-e) our child */
static int ours;             /* -e: it is our child */
static int in = -1, out = -1; /* our ends of its standard input and output */
static int execfail = -1;    /* a byte here: its exec failed */
static pid_t first;          /* -e, after TLS: the smtpd that greeted, told to go */
static int first_out = -1;   /* its output, left unread, so that its last reply finds a pipe */

#define ENVMAX 4096
static char *envbuf[ENVMAX];

/* What the smtpd must not learn: our descriptors and our policy
 * (UCSPITLS, read by proxy.c), and the configuration
 * of the TLS side, which s6-tlsd-io (s6-networking) and sslserver
 * (ucspi-ssl) read from the environment they leave to the application:
 * where the key and certificates live, the key's password, the identity
 * and root the TLS engine takes. */
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

char **smtpd_environ(const struct ucspitls_block *b)
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

/* A socket's two addresses, as names for it where fstat gives sockets no
 * inode (the BSDs); only IP sockets: unnamed local ones all look alike. */
static int sameends(int a, int b)
{
  int peer;
  for (peer = 0; peer < 2; peer++) {
    struct sockaddr_storage x, y;
    socklen_t lx = sizeof x, ly = sizeof y;
    int r = peer ? getpeername(a, (struct sockaddr *)&x, &lx) : getsockname(a, (struct sockaddr *)&x, &lx);
    if (r < 0 || (peer ? getpeername(b, (struct sockaddr *)&y, &ly) : getsockname(b, (struct sockaddr *)&y, &ly)) < 0)
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

/* One poll(2) tells which of the first FDSCAN descriptors are open. */
#define FDSCAN 256
void smtpd_strays(int keep1, int keep2, int keep3)
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
    if (p[i - 3].revents & POLLNVAL || i == keep1 || i == keep2 || i == keep3) continue;
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

/* Becomes the smtpd on pipes i and o. Every other descriptor of ours is
 * close-on-exec (the UCSPI-TLS ones too). failfd carries one byte to the
 * session if the exec fails, so that the failure is logged once. */
static void become(char **argv, char **env, int i, int o, int failfd)
{
  int e;
  end_role(ROLE_SMTPD, 0);
  signals_restore();
  if (dup2(i, 0) < 0 || dup2(o, 1) < 0) fatal(111, "unable to set up the smtpd's stdin and stdout: %s", strerror(errno));
  /* POSIX: assigning environ is how a whole new environment is given to execvp */
  environ = env;
  execvp(argv[0], argv);
  e = errno;
  while (write(failfd, "x", 1) < 0 && errno == EINTR) ;
  fatal(111, "unable to exec %s: %s", argv[0], strerror(e));
}

void smtpd_start(char **argv, char **env, int child)
{
  int i[2], o[2], fail[2];
  pid_t p;
  mkpipe(i);
  mkpipe(o);
  mkpipe(fail);
  signals_hold();
  p = fork();
  if (p < 0) {
    signals_release();
    fatal(111, "fork: %s", strerror(errno));
  }
  /* the smtpd: by default the parent, so that it keeps the pid the
   * super-server knows; with -e the child */
  if (child ? !p : p > 0) become(argv, env, i[0], o[1], fail[1]);
  signals_release();
  pid = child ? p : getppid();
  ours = child;
  if (child) signals_child(p);
  close(i[0]);
  close(o[1]);
  close(fail[1]);
  execfail = fail[0];
  /* these pipe ends are ours alone: never blocking */
  fcntl(i[1], F_SETFL, O_NONBLOCK);
  fcntl(o[0], F_SETFL, O_NONBLOCK);
  in = i[1];
  out = o[0];
}

int smtpd_in(void)
{
  return in;
}

int smtpd_out(void)
{
  return out;
}

void smtpd_close_input(void)
{
  if (in >= 0) close(in);
  in = -1;
}

int smtpd_give_input(void)
{
  int fd = in;
  in = -1;
  return fd;
}

void smtpd_close_pipes(void)
{
  smtpd_close_input();
  if (out >= 0) close(out);
  if (execfail >= 0) close(execfail);
  out = execfail = -1;
}

size_t smtpd_discard(long long deadline)
{
  char junk[512];
  size_t n = 0;
  while (out >= 0) {
    struct pollfd p[2];
    ssize_t r;
    p[0].fd = out; p[0].events = POLLIN;
    p[1].fd = io_sigfd(); p[1].events = POLLIN;
    r = poll(p, 2, io_left(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    if (p[1].revents) io_signalled();
    if (!p[0].revents) continue;
    r = read(out, junk, sizeof junk);
    if (!r || (r < 0 && errno != EINTR && errno != EAGAIN)) break;
    if (r > 0) n += (size_t)r;
  }
  return n;
}

int smtpd_exec_failed(void)
{
  char c;
  return execfail >= 0 && read(execfail, &c, 1) == 1;
}

void smtpd_renew(const struct ucspitls_block *b, char **argv)
{
  /* a full pipe means it reads nothing, and EOF says the same */
  ssize_t r = write(in, "QUIT\r\n", 6);
  (void)r;
  smtpd_close_input();
  close(execfail);
  first = pid;
  first_out = out;
  out = execfail = -1;
  smtpd_start(argv, smtpd_environ(b), 1);
}

void smtpd_term(void)
{
  int st;
  /* a pid names it while it is our child not yet reaped, or our parent
   * (getppid() changes when the parent is gone) */
  if (pid > 0 && (ours ? !signals_ended(pid, &st) : getppid() == pid)) kill(pid, SIGTERM);
}

/* How long the first smtpd has after its SIGTERM before SIGKILL. */
#define FIRSTGRACE 1000

int smtpd_wait(pid_t relay)
{
  int status = -1, st;
  long long firstend = 0;
  if (first_out >= 0) close(first_out);
  first_out = -1;
  if (!pid) return -1;
  for (;;) {
    struct pollfd p;
    int smtpd_gone, first_gone;
    io_signalled();
    smtpd_gone = signals_ended(pid, &status);
    first_gone = !first || signals_ended(first, &st);
    if (smtpd_gone && first_gone && (!relay || signals_ended(relay, &st))) break;
    /* the first smtpd was told QUIT long ago: one that lingers is ended */
    if (!first_gone && !firstend) {
      kill(first, SIGTERM);
      firstend = io_deadline(FIRSTGRACE);
    } else if (!first_gone && !io_left(firstend)) {
      kill(first, SIGKILL);
      firstend = io_deadline(FIRSTGRACE);
    }
    p.fd = io_sigfd();
    p.events = POLLIN;
    poll(&p, 1, first_gone ? -1 : io_left(firstend));
  }
  return status;
}

void smtpd_exit_as(int status)
{
  if (WIFSIGNALED(status)) {
    /* the same death, without a core file of ours */
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = 0;
    setrlimit(RLIMIT_CORE, &rl);
    signals_restore();
    signal(WTERMSIG(status), SIG_DFL);
    raise(WTERMSIG(status));
  }
  _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 111);
}
