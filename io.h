/* io.h: the clock and the waits that every module with an fd shares. */
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

/* Waits until fd is ready for events (POLLIN or POLLOUT). Returns 1 when
 * ready (or hung up), 0 when the deadline passed, -1 with errno on error. */
int io_wait(int fd, short events, long long deadline);

/* Writes all n bytes to fd, which may be blocking, waiting at most until
 * deadline; adds what it wrote to *done. Returns 0, or -1 with errno
 * (ETIMEDOUT when the deadline passed). */
int io_writeall(int fd, const char *s, size_t n, size_t *done, long long deadline);

#endif
