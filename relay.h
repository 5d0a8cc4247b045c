/* relay.h: the final relay between the client and the smtpd, once the
 * proxy has nothing left to decide: s6-ioconnect, or the built-in copy. */
#ifndef RELAY_H
#define RELAY_H

#include <stddef.h>

#define RELAY_BUFSIZE 65536 /* per direction; holds the engine's leftovers too */

enum relay_dir { RELAY_TOSERVER, RELAY_TOCLIENT };
enum relay_result {
  RELAY_OK,
  RELAY_IDLE,    /* no byte moved for the idle bound */
  RELAY_STALLED, /* the client took no byte for the idle bound while some waited for it */
  RELAY_DRAIN,   /* the drain bound passed after the smtpd's output ended */
  RELAY_ERROR
};

/* Queues n bytes to go out in direction d before anything relayed.
 * Returns 0, or -1 if they do not fit. */
int relay_preload(enum relay_dir d, const char *s, size_t n);

/* Writes the queued bytes (client side first) waiting at most until
 * deadline. Returns 0, or -1 with errno; what could not be written stays
 * queued for relay_run(). */
int relay_flush(int cfdw, int sfdw, long long deadline);

/* Passes EOF on to whoever reads fd: shutdown(2) for a socket, close for
 * anything else, unless samefd (fd is also read from, and stays open). */
void relay_eof(int fd, int samefd);

/* Adds the bytes the relay read from the client and wrote to it (the
 * engine's leftovers included) to *in and *out. */
void relay_counts(unsigned long long *in, unsigned long long *out);

/* Whether s6-ioconnect is an executable file in one of PATH's folders. */
int relay_findable(void);

/* Becomes s6-ioconnect between fds 0/1 and the smtpd's pipes, with idle
 * timeout ms (0: none). Returns only if it cannot be executed; errno says why. */
void relay_exec(int sfdr, int sfdw, unsigned long timeout);

/* The built-in relay: client cfdr -> sfdw and sfdr -> cfdw, queued bytes
 * first, until both directions have ended; EOF is passed on by close (pipe)
 * or shutdown (socket). idle: ms with no byte moved, or with bytes waiting
 * for a client that takes none, before giving up (0: never). Once the
 * smtpd's side has ended, the client's is read and discarded until its EOF,
 * so that a TLS engine never loses its pipe while it still holds our last
 * bytes; from the end of the smtpd's output, everything ends within drain
 * ms (the drain bound; 0: none), whatever the client does. It keeps the
 * signal watch (io.h): once io_signalled() says the session is to end, the
 * client's side counts as ended, as if it had sent EOF. On return, on a
 * bound too, EOF has been passed on both ways: sfdw is closed (it is the
 * relay's to close), and so is cfdw if it is a pipe other than cfdr.
 * Descriptor flags are as they were. */
enum relay_result relay_run(int cfdr, int cfdw, int sfdr, int sfdw,
                            unsigned long idle, unsigned long drain);

#endif
