/* signals.c: one self-pipe for SIGTERM and SIGCHLD (see signals.h). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "signals.h"

static int pipefd[2] = { -1, -1 };
static volatile sig_atomic_t terms;
/* as the program was given them */
static struct sigaction given_term, given_chld, given_pipe;
static sigset_t given_mask, unheld;
static int caught;

/* the children whose status is wanted: the smtpds and s6-ioconnect */
#define CHILDREN 4
static struct {
  pid_t pid;
  int ended, status;
} children[CHILDREN];

static void onsignal(int sig)
{
  int e = errno;
  ssize_t r;
  if (sig == SIGTERM) terms++;
  /* a full pipe holds a byte already: enough to wake the wait */
  r = write(pipefd[1], "", 1);
  (void)r;
  errno = e;
}

static int mkpipe(void)
{
  int i;
  if (pipe(pipefd) < 0) return -1;
  for (i = 0; i < 2; i++) {
    fcntl(pipefd[i], F_SETFD, FD_CLOEXEC);
    fcntl(pipefd[i], F_SETFL, O_NONBLOCK);
  }
  return 0;
}

int signals_catch(void)
{
  struct sigaction sa;
  if (pipefd[0] < 0 && mkpipe() < 0) return -1;
  if (!caught) {
    sigaction(SIGTERM, 0, &given_term);
    sigaction(SIGCHLD, 0, &given_chld);
    sigaction(SIGPIPE, 0, &given_pipe);
    sigprocmask(SIG_SETMASK, 0, &given_mask);
    caught = 1;
  }
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = onsignal;
  sigaction(SIGTERM, &sa, 0);
  /* children are reaped, whatever SIGCHLD was given as (SIG_IGN would
   * leave no status to pass on) */
  sigaction(SIGCHLD, &sa, 0);
  sa.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &sa, 0);
  return 0;
}

int signals_fd(void)
{
  return pipefd[0];
}

unsigned signals_take(void)
{
  char junk[64];
  int st, i;
  pid_t pid;
  while (pipefd[0] >= 0 && read(pipefd[0], junk, sizeof junk) > 0) ;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
    for (i = 0; i < CHILDREN; i++)
      if (children[i].pid == pid) {
        children[i].ended = 1;
        children[i].status = st;
      }
  return (unsigned)terms;
}

void signals_child(pid_t pid)
{
  int i;
  for (i = 0; i < CHILDREN; i++)
    if (!children[i].pid) {
      children[i].pid = pid;
      return;
    }
}

int signals_ended(pid_t pid, int *status)
{
  int i;
  for (i = 0; i < CHILDREN; i++)
    if (children[i].pid == pid && children[i].ended) {
      *status = children[i].status;
      return 1;
    }
  return 0;
}

void signals_hold(void)
{
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &set, &unheld);
}

void signals_release(void)
{
  sigprocmask(SIG_SETMASK, &unheld, 0);
}

void signals_restore(void)
{
  int i;
  sigaction(SIGTERM, &given_term, 0);
  sigaction(SIGCHLD, &given_chld, 0);
  sigaction(SIGPIPE, &given_pipe, 0);
  for (i = 0; i < 2; i++) {
    if (pipefd[i] >= 0) close(pipefd[i]);
    pipefd[i] = -1;
  }
  sigprocmask(SIG_SETMASK, &given_mask, 0);
}
