/* proxy.c: main, the options, and the session: the poll loop between the
 * client and the smtpd while the SMTP engine is in the middle, the TLS
 * handshake the engine asks for, and the hand-over to the relay once it
 * has decided. How the session ends is end.c's; the smtpd's process is
 * smtpd.c's. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "end.h"
#include "io.h"
#include "log.h"
#include "relay.h"
#include "signals.h"
#include "smtp.h"
#include "smtpd.h"
#include "ucspitls.h"

#define USAGE "usage: " PROG " [ -v verbosity ] [ -t timeout ] [ -T relaytimeout ] [ -r ] [ -a ] [ -e ] [ -L ] [ -B | -S ] [ -- ] smtpd [ args... ]"

static unsigned long timeout = 300000;
/* RFC 5321 4.5.3.2.6: a server waits 10 minutes for the end of DATA, the
 * longest wait it owes a client; the relay cannot tell a command from data */
static unsigned long relaytimeout = 600000;
static int relaytimeout_given;
static int ioconnect;        /* -S */
static int fresh;            /* -e */
static unsigned flags;       /* the engine's */
static char **smtpd_argv;
static int ctlfd, readfd, writefd;
static struct smtp engine;
static int drained;          /* the engine's timeout was the drain bound's */
static char keepbuf[UCSPITLS_KEEPMAX]; /* the block's entries, the smtpd's after TLS (-e) */

/* The longest timeout: poll(2) waits at most this long in one call, and
 * the clock's milliseconds plus this much are far from overflowing. */
#define TIMEOUTMAX 2147483647UL

static unsigned long number(const char *s, char opt, unsigned long max)
{
  unsigned long v = 0;
  if (!s || !*s) {
    fatal(100, "%s", USAGE);
    return 0;
  }
  for (; *s; s++) {
    unsigned long d = (unsigned long)(*s - '0');
    if (*s < '0' || *s > '9' || v > (max - d) / 10) {
      if (opt == 'v') fatal(100, "-v wants a decimal level");
      fatal(100, "-%c wants a decimal number of milliseconds up to %lu", opt, max);
    }
    v = v * 10 + d;
  }
  return v;
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
        if (c == 'v') log_verbosity = v;
        else if (c == 't') timeout = v;
        else { relaytimeout = v; relaytimeout_given = 1; }
        s = arg + strlen(arg) - 1;
        break;
      }
      default: fatal(100, "%s", USAGE);
      }
    }
  }
  return argv;
}

/* UCSPITLS, which the access rules set per client (fixsmtpio and s/qmail
 * read it too), is this session's TLS policy, and wins over -r: "-"
 * STARTTLS not offered, empty the default, "!" TLS required; any other
 * value (s/qmail's "?" and "@" among them) requires TLS, with a warning.
 * It is ours: smtpd_environ() keeps it from the smtpd, which might act on
 * it again. */
static unsigned policy(unsigned f)
{
  const char *v = getenv("UCSPITLS");
  if (!v) return f;
  f &= ~(unsigned)SMTP_REQUIRETLS;
  if (!strcmp(v, "-")) return f | SMTP_NOTLS;
  if (!*v) return f;
  if (strcmp(v, "!") != 0) {
    char shown[36];
    size_t n;
    /* what the log shows of it: printable, at most 32 octets */
    for (n = 0; n < 32 && v[n] >= ' ' && v[n] < 127; n++) shown[n] = v[n];
    memcpy(shown + n, v[n] ? "..." : "", v[n] ? 4 : 1);
    warn("UCSPITLS=%s is no policy known here: TLS required", shown);
  }
  return f | SMTP_REQUIRETLS;
}

/* Once the smtpd's output has ended, everything ends within this. */
static unsigned long drainbound(void)
{
  if (relaytimeout_given) return relaytimeout;
  return timeout ? timeout : relaytimeout;
}

/* The session's idle bound from now, while the engine is in the middle:
 * the one place it is computed. */
static unsigned long idlebound; /* the bound idle_deadline() last chose, for the log */
static long long idle_deadline(void)
{
  idlebound = timeout;
  /* RFC 5321 4.5.3.2.6: the reply to the end of content may take 10 minutes */
  if (timeout && timeout < SMTP_FINALWAIT && smtp_final_reply_owed(&engine)) idlebound = SMTP_FINALWAIT;
  return io_deadline(idlebound);
}

/* A UCSPI-TLS descriptor: no exec'd process holds it unless given it. */
static int getfd(const char *name)
{
  const char *problem;
  int fd;
  if (ucspitls_fd(name, &fd, &problem)) {
    const char *v = getenv(name);
    if (v && *v) fatal(100, "%s=%.32s %s", name, v, problem);
    fatal(100, "%s %s", name, problem);
  }
  if (fd > 2) fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}

/* The engine closed the session: why, in words, and the end. */
static void close_session(void)
{
  switch (smtp_why(&engine)) {
  case SMTP_WHY_SERVERBROKEN: fatal(1, "the smtpd sent a line that is not an SMTP reply"); break;
  case SMTP_WHY_SERVERLONG: fatal(1, "the smtpd sent a reply line longer than %d bytes", SMTP_REPLYMAX); break;
  case SMTP_WHY_GREETING:
    warn("the smtpd after TLS refused the session: closing");
    end(smtp_exitcode(&engine), "the smtpd after TLS refused");
    break;
  case SMTP_WHY_ERRORS:
    info("client sent too many malformed lines: closing");
    end(smtp_exitcode(&engine), "too many malformed lines");
    break;
  case SMTP_WHY_CONTENT:
    warn("message refused for %s in its content (SMTP smuggling?): the smtpd's input ended without the final dot",
         smtp_badcontent(&engine));
    end(smtp_exitcode(&engine), "message refused for its content");
    break;
  case SMTP_WHY_STRAY:
    warn("the smtpd sent a reply that answers no command (SMTP smuggling?): \"%s\": closing",
         smtp_stray(&engine));
    end(smtp_exitcode(&engine), "the smtpd answered no command");
    break;
  case SMTP_WHY_BDAT:
    info("client sent a BDAT whose chunk cannot be framed: closing");
    end(smtp_exitcode(&engine), "malformed BDAT");
    break;
  case SMTP_WHY_HTTP:
    info("client sent an HTTP request: closing");
    end(smtp_exitcode(&engine), "HTTP request");
    break;
  case SMTP_WHY_TIMEOUT:
    if (drained) warn("the client's side still open %lu ms after the smtpd's output ended: closing", drainbound());
    else warn("no traffic for %lu ms: closing", idlebound);
    end(smtp_exitcode(&engine), drained ? "drain bound" : "idle timeout");
    break;
  case SMTP_WHY_SERVER421: end(smtp_exitcode(&engine), "the smtpd answered 421"); break;
  case SMTP_WHY_QUIT: end(smtp_exitcode(&engine), "quit"); break;
  case SMTP_WHY_CLIENTEOF: end(smtp_exitcode(&engine), "client closed without QUIT"); break;
  default:
    /* the exec failure, if that is what it was, is logged already */
    if (smtp_exitcode(&engine) && !smtpd_exec_failed()) warn("the smtpd closed with replies still owed");
    end(smtp_exitcode(&engine), "the smtpd closed");
  }
}

static void move_to(int from, int to)
{
  if (from == to) return;
  if (dup2(from, to) < 0) fatal(111, "unable to move the TLS descriptors: %s", strerror(errno));
}

static void handshake(void)
{
  struct ucspitls_block b;
  const char *proto, *cipher;
  size_t dropped;
  int r, w;
  enum ucspitls_result res;
  ucspitls_block_init(&b);
  if (fresh) ucspitls_block_keep(&b, keepbuf, sizeof keepbuf);
  res = ucspitls_start(ctlfd, ctlfd == readfd, idle_deadline(), &b);
  if (res == UCSPITLS_TOOBIG) fatal(1, "the UCSPI-TLS information block is over %lu bytes", UCSPITLS_BLOCKMAX);
  if (res == UCSPITLS_ERROR) fatal(111, "unable to talk to the UCSPI-TLS server: %s", strerror(errno));
  /* what clients do, scanners most of all, is no warning for the operator;
   * a SIGTERM here is sslserver's for a failed handshake */
  if (res == UCSPITLS_FAILED || res == UCSPITLS_STOPPED) {
    info("TLS handshake failed");
    end(1, "TLS handshake failed");
  }
  if (res == UCSPITLS_GONE) {
    warn("the UCSPI-TLS server is gone before the handshake");
    end(111, "no UCSPI-TLS server");
  }
  if (res == UCSPITLS_TIMEOUT) {
    info("timed out waiting for the TLS handshake");
    end(99, "TLS handshake timed out");
  }
  proto = b.protocol[0] ? b.protocol : "unknown";
  cipher = b.cipher[0] ? b.cipher : "unknown";
  log_session_tls(proto, cipher);
  info("TLS started: protocol %s, cipher %s", proto, cipher);
  if (ctlfd != readfd && ctlfd != writefd) close(ctlfd);
  ctlfd = -1;
  /* the TLS pipes become fds 0/1; the raw socket is the TLS engine's now */
  r = fcntl(readfd, F_DUPFD, 3);
  w = fcntl(writefd, F_DUPFD, 3);
  if (r < 0 || w < 0) {
    fatal(111, "unable to move the TLS descriptors: %s", strerror(errno));
    return;
  }
  move_to(r, 0);
  move_to(w, 1);
  close(r);
  close(w);
  if (readfd > 2) close(readfd);
  if (writefd > 2 && writefd != readfd) close(writefd);
  readfd = writefd = -1;
  /* RFC 3207 4.2: nothing from before TLS counts, in either direction; an
   * EOF seen here is seen again by the session */
  dropped = smtpd_discard(io_now());
  if (fresh) {
    if (b.over)
      warn("the UCSPI-TLS information block is over %lu bytes: the smtpd after TLS gets none of its variables",
           UCSPITLS_KEEPMAX);
    smtpd_renew(&b, smtpd_argv);
    end_smtpd_renewed();
  }
  dropped += smtp_tls_started(&engine);
  if (dropped) info("discarded %lu bytes the smtpd sent before the TLS handshake", (unsigned long)dropped);
}

/* The descriptors s6-ioconnect is given, close-on-exec or not. */
static void inherit(int yes)
{
  int fds[5], i;
  fds[0] = smtpd_out(); fds[1] = smtpd_in();
  /* the control socket, when TLS was declined: it must outlive the session */
  fds[2] = ctlfd; fds[3] = readfd; fds[4] = writefd;
  for (i = 0; i < 5; i++)
    if (fds[i] > 2) fcntl(fds[i], F_SETFD, yes ? 0 : FD_CLOEXEC);
}

/* With -S: s6-ioconnect takes the session, after the engine's leftovers
 * (it starts with empty buffers); returns if it cannot be executed. */
static void ioconnect_exec(void)
{
  if (relay_flush(1, smtpd_in(), io_deadline(relaytimeout)) < 0) {
    if (errno != ETIMEDOUT) return;
    warn("relay: the engine's last bytes found no reader for %lu ms: closing", relaytimeout);
    end(99, "the client read nothing");
  }
  inherit(1);
  if (fresh) {
    /* the relayer: the waiter tells the end */
  } else {
    unsigned long long in = 0, out = 0;
    relay_counts(&in, &out);
    log_session_bytes(in, out);
    log_end("s6-ioconnect relays the rest", "exit s6-ioconnect's");
  }
  signals_restore();
  io_signals(-1, 0);
  relay_exec(smtpd_out(), smtpd_in(), relaytimeout);
  if (signals_catch() == 0) io_signals(signals_fd(), end_react);
  inherit(0);
  info("unable to exec s6-ioconnect: %s: using the built-in relay", strerror(errno));
}

static void handover(void)
{
  struct smtp_leftover l;
  enum relay_result res;
  unsigned long long in = 0, out = 0;
  int i;
  smtp_leftover(&engine, &l);
  /* the relay has the session now: the client's bytes are its own */
  end_engine(0);
  for (i = 0; i < 2; i++)
    if (relay_preload(RELAY_TOCLIENT, l.toclient[i], l.toclientlen[i]) < 0
        || relay_preload(RELAY_TOSERVER, l.toserver[i], l.toserverlen[i]) < 0)
      fatal(111, "relay buffers too small for the leftovers");
  if (ioconnect && !relay_findable()) {
    info("s6-ioconnect is not in PATH: using the built-in relay");
    ioconnect = 0;
  }
  if (ioconnect && fresh) {
    /* this process waits for the smtpds: another becomes s6-ioconnect */
    pid_t pid;
    signals_hold();
    pid = fork();
    if (pid < 0) {
      signals_release();
      fatal(111, "fork: %s", strerror(errno));
    }
    if (pid) {
      signals_release();
      signals_child(pid);
      /* the relay's descriptors are its own: ours would keep EOF from passing */
      close(0);
      close(1);
      smtpd_close_pipes();
      end_role(ROLE_WAITER, pid);
      end(0, "s6-ioconnect relayed the rest");
    }
    end_role(ROLE_RELAYER, 0);
    /* a self-pipe of its own: the waiter's wakes only the waiter */
    signals_restore();
    if (signals_catch() < 0) fatal(111, "pipe: %s", strerror(errno));
    io_signals(signals_fd(), end_react);
  }
  if (ioconnect) ioconnect_exec();
  res = relay_run(0, 1, smtpd_out(), smtpd_give_input(), relaytimeout, drainbound());
  relay_counts(&in, &out);
  log_session_bytes(in, out);
  switch (res) {
  case RELAY_ERROR: fatal(111, "relay: %s", strerror(errno)); break;
  case RELAY_IDLE:
    warn("relay: no traffic for %lu ms: closing", relaytimeout);
    end(99, "relay idle timeout");
    break;
  case RELAY_STALLED:
    warn("relay: the client read nothing for %lu ms: closing", relaytimeout);
    end(99, "the client read nothing");
    break;
  case RELAY_DRAIN:
    warn("relay: the client's side still open %lu ms after the smtpd's output ended: closing", drainbound());
    end(99, "drain bound");
    break;
  case RELAY_OK: end(0, io_ending() ? "SIGTERM" : "relayed to the end"); break;
  }
}

static void session(void)
{
  long long deadline = idle_deadline();
  for (;;) {
    struct pollfd p[5];
    const char *out, *sout = 0;
    char *cin = 0, *sin = 0;
    size_t cout, soutn, croom, sroom;
    int moved = 0, r, sr, sw;
    enum smtp_status st = smtp_status(&engine);
    cout = smtp_client_output(&engine, &out);
    if (st == SMTP_CLOSE) close_session();
    if (st == SMTP_RELAY) handover();
    if (st == SMTP_STARTTLS && !cout) { handshake(); deadline = idle_deadline(); continue; }
    if (io_ending()) {
      info("SIGTERM: ending the session");
      end(0, "SIGTERM");
    }
    /* checked on every turn: a client that keeps sending keeps poll from timing out */
    if (end_draining() && end_drain_deadline() && !io_left(end_drain_deadline())) {
      drained = 1;
      smtp_timeout(&engine);
      continue;
    }
    if (smtpd_in() >= 0 && smtp_server_done(&engine)) smtpd_close_input();
    sr = smtpd_out();
    sw = smtpd_in();
    croom = smtp_client_room(&engine, &cin);
    sroom = smtp_server_room(&engine, &sin);
    soutn = sw >= 0 ? smtp_server_output(&engine, &sout) : 0;
    p[0].fd = croom ? 0 : -1; p[0].events = POLLIN;
    p[1].fd = cout ? 1 : -1; p[1].events = POLLOUT;
    /* watched even when it is not read, so that its hang-up is seen while
     * the client holds our buffers full */
    p[2].fd = sroom || !end_draining() ? sr : -1; p[2].events = sroom ? POLLIN : 0;
    p[3].fd = soutn ? sw : -1; p[3].events = POLLOUT;
    p[4].fd = io_sigfd(); p[4].events = POLLIN;
    r = poll(p, 5, io_left(io_sooner(deadline, end_drain_deadline())));
    if (r < 0) {
      if (errno == EINTR) continue;
      fatal(111, "poll: %s", strerror(errno));
    }
    if (!r) {
      if (!io_left(deadline)) smtp_timeout(&engine);
      continue;
    }
    if (p[4].revents && io_signalled()) continue;
    if (p[1].revents) {
      /* fd 1 may be the super-server's socket, left blocking: small writes */
      ssize_t w = write(1, out, cout > 512 ? 512 : cout);
      if (w > 0) { smtp_client_sent(&engine, (size_t)w); moved = 1; log_session_bytes(0, (unsigned long long)w); }
      else if (w < 0 && errno != EINTR && errno != EAGAIN) {
        info("client connection lost: %s", strerror(errno));
        /* nothing more reaches it */
        end_engine(0);
        end(1, "client connection lost");
      }
    }
    if (p[3].revents) {
      ssize_t w = write(sw, sout, soutn);
      if (w > 0) { smtp_server_sent(&engine, (size_t)w); moved = 1; }
      else if (w < 0 && errno != EINTR && errno != EAGAIN) smtp_server_sent(&engine, soutn); /* gone: its EOF follows */
    }
    /* the room is asked again right before each read: writing may have
     * changed it, and content is read straight into the smtpd's buffer */
    if (p[0].revents && (croom = smtp_client_room(&engine, &cin)) > 0) {
      ssize_t n = read(0, cin, croom);
      if (n > 0) {
        log_session_bytes((unsigned long long)n, 0);
        smtp_client_input(&engine, (size_t)n);
        moved = 1;
        /* the pipe is ours and non-blocking: pass the bytes on at once, so
         * that the smtpd starts on them one poll sooner (message content) */
        if (sw >= 0 && (soutn = smtp_server_output(&engine, &sout)) > 0) {
          ssize_t w = write(sw, sout, soutn);
          if (w > 0) smtp_server_sent(&engine, (size_t)w);
        }
      }
      else if (!n || (errno != EINTR && errno != EAGAIN)) smtp_client_eof(&engine);
    }
    if (p[2].revents & (POLLHUP | POLLERR)) end_smtpd_ended();
    if (p[2].revents && (sroom = smtp_server_room(&engine, &sin)) > 0) {
      ssize_t n = read(sr, sin, sroom);
      if (n > 0) { smtp_server_input(&engine, (size_t)n); moved = 1; }
      else if (!n || (errno != EINTR && errno != EAGAIN)) { end_smtpd_ended(); smtp_server_eof(&engine); }
    }
    if (moved) deadline = idle_deadline();
  }
}

int main(int argc, char **argv)
{
  (void)argc;
  /* the usage lines go untagged */
  smtpd_argv = options(argv);
  log_tag();
  end_role(fresh ? ROLE_SUPERVISOR : ROLE_PROXY, 0);
  end_drain_bound(drainbound());
  if (!*smtpd_argv) fatal(100, "%s", USAGE);
  flags = policy(flags);
  ctlfd = getfd("SSLCTLFD");
  readfd = getfd("SSLREADFD");
  writefd = getfd("SSLWRITEFD");
  if (fcntl(0, F_GETFD) < 0 || fcntl(1, F_GETFD) < 0)
    fatal(100, "fds 0 and 1 must be the client connection");
  if (fcntl(2, F_GETFD) < 0 && open("/dev/null", O_WRONLY) != 2)
    fatal(111, "unable to open /dev/null as fd 2: %s", strerror(errno));
  /* before the first fork: every process takes signals the same way */
  if (signals_catch() < 0) fatal(111, "pipe: %s", strerror(errno));
  io_signals(signals_fd(), end_react);
  smtpd_strays(ctlfd, readfd, writefd);
  log_session_start();
  smtpd_start(smtpd_argv, smtpd_environ(0), fresh);
  smtp_init(&engine, flags);
  end_engine(&engine);
  session();
  return 0;
}
