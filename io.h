/* io.h: the clock and the waits that every module with an fd shares, and
 * the signal watch every wait keeps. */
#ifndef IO_H
#define IO_H

#include <stddef.h>

/* Milliseconds on a monotonic clock. */
long long io_now(void);

/* Milliseconds from now until deadline, clamped for poll(2); -1 if
 * deadline is 0 (no deadline). */
int io_left(long long deadline);

/* The deadline timeout ms from now, or 0 (none) if timeout is 0. */
long long io_deadline(unsigned long timeout);

/* The earlier of two deadlines, 0 being none. */
long long io_sooner(long long a, long long b);

/* Every wait of the program also polls fd (the signal self-pipe's read
 * end; -1: none) and, when it is readable, calls io_signalled(), which
 * asks react() what the signal means: nonzero means the session is to
 * end (a SIGTERM came), and from then on every io_signalled() says so
 * (react() is still called, for what later signals mean). Each call to
 * io_signals() starts a new watch, in which nothing has ended yet. */
void io_signals(int fd, int (*react)(void));
int io_sigfd(void);
int io_signalled(void);
/* What io_signalled() last said, without asking again. */
int io_ending(void);

/* Waits until fd is ready for events (POLLIN or POLLOUT). Returns 1 when
 * ready (or hung up), 0 when the deadline passed, -1 with errno on error.
 * Once io_signalled() has said the session is to end, it no longer waits:
 * 0 unless fd is ready at once. */
int io_wait(int fd, short events, long long deadline);

/* Writes all n bytes to fd, which may be blocking, waiting as io_wait()
 * does at most until deadline; adds what it wrote to *done. Returns 0, or
 * -1 with errno (ETIMEDOUT when the deadline passed or the session is to
 * end). */
int io_writeall(int fd, const char *s, size_t n, size_t *done, long long deadline);

#endif
