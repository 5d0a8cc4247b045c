/* signals.h: SIGTERM and SIGCHLD, taken the same way from the start to
 * the end: their handlers write a byte on one self-pipe, which every wait
 * of the program polls beside its own descriptors (io_signals() in io.h
 * makes them do so); SIGTERMs are counted, and children that ended are
 * reaped as soon as the pipe is read, so that none stays a zombie.
 * SIGPIPE is ignored: a write to a closed pipe or socket fails with EPIPE. */
#ifndef SIGNALS_H
#define SIGNALS_H

#include <sys/types.h>

/* Before the first fork: keeps the dispositions the program was given and
 * installs its own. Returns 0, or -1 with errno if the pipe cannot be made. */
int signals_catch(void);

/* The self-pipe's read end (-1 in a process that restored the given
 * dispositions): readable when a signal came. */
int signals_fd(void);

/* Empties the pipe and reaps every child that has ended. Returns how many
 * SIGTERMs this process has had so far. */
unsigned signals_take(void);

/* A child whose end is wanted: its status is kept when it is reaped. */
void signals_child(pid_t pid);
/* Whether child pid was reaped; if so sets *status as waitpid(2) gave it. */
int signals_ended(pid_t pid, int *status);

/* Around fork(2): a signal that comes in between waits until
 * signals_release(), or in the process that is to exec, signals_restore(). */
void signals_hold(void);
void signals_release(void);

/* In a process about to exec: the dispositions and the mask as the program
 * was given them, its copy of the pipe closed. The one place they are
 * restored. */
void signals_restore(void);

#endif
