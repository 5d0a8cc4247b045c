/* end.c: the roles and the one end path (see end.h). */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <unistd.h>
#include "end.h"
#include "fmt.h"
#include "io.h"
#include "log.h"
#include "relay.h"
#include "signals.h"
#include "smtpd.h"

static enum role role;
static pid_t relayer;
static struct smtp *engine;
static unsigned long drainbound;
static long long drainend;   /* when the drain bound runs out; 0: none */
static int draining;         /* the smtpd's output has ended: the bound has started */
static unsigned terms;       /* SIGTERMs reacted to */

void end_role(enum role r, pid_t pid)
{
  role = r;
  relayer = pid;
}

void end_engine(struct smtp *e)
{
  engine = e;
}

void end_drain_bound(unsigned long ms)
{
  drainbound = ms;
}

void end_smtpd_ended(void)
{
  if (draining) return;
  draining = 1;
  drainend = io_deadline(drainbound);
}

void end_smtpd_renewed(void)
{
  draining = 0;
  drainend = 0;
}

long long end_drain_deadline(void)
{
  return drainend;
}

int end_draining(void)
{
  return draining;
}

int end_react(void)
{
  unsigned n = signals_take();
  for (; terms < n; terms++) {
    if (terms) smtpd_term();
    else if (role == ROLE_WAITER) kill(relayer, SIGTERM);
  }
  return n > 0;
}

/* Steps 2 to 5, where this process serves the session. */
static void session_end(void)
{
  long long by;
  end_smtpd_ended();
  by = drainend;
  if (engine) {
    const char *out;
    size_t n = smtp_client_output(engine, &out), done = 0;
    io_writeall(1, out, n, &done, by);
    log_session_bytes(0, done);
  }
  smtpd_close_input();
  smtpd_discard(by);
  if (engine) {
    char junk[512];
    ssize_t n = 1;
    relay_eof(1, 0);
    while (n && io_wait(0, POLLIN, by) > 0) {
      n = read(0, junk, sizeof junk);
      if (n < 0 && errno != EINTR && errno != EAGAIN) break;
    }
  }
}

/* Step 7: the end line, with the exit status to come. */
static void tell(const char *why, int code, int status)
{
  char how[40];
  if (status < 0) fmt(how, sizeof how, "exit %d", code);
  else if (WIFSIGNALED(status)) fmt(how, sizeof how, "smtpd signal %d", WTERMSIG(status));
  else fmt(how, sizeof how, "smtpd exit %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  log_end(why, how);
}

void end(int code, const char *why)
{
  int status = -1;
  switch (role) {
  case ROLE_SMTPD:
    _exit(code);
  case ROLE_RELAYER:
    session_end();
    _exit(code);
  case ROLE_PROXY:
    session_end();
    tell(why, code, -1);
    _exit(code);
  case ROLE_SUPERVISOR:
    session_end();
    status = smtpd_wait(0);
    break;
  case ROLE_WAITER:
    status = smtpd_wait(relayer);
    break;
  }
  /* the smtpd's status, as the super-server would see it without -e; our
   * own if none was started */
  tell(why, code, status);
  if (status >= 0) smtpd_exit_as(status);
  _exit(code);
}

void fatal(int code, const char *f, ...)
{
  char line[480];
  va_list ap;
  va_start(ap, f);
  fmt_va(line, sizeof line, f, ap);
  va_end(ap);
  log_line(0, "fatal", "%s", line);
  end(code, "fatal error");
}
