/* end.h: how each process of the program ends. A process has one role,
 * which says what its end does; every end, fatal errors included, takes
 * the one path in end(), which never returns:
 *   1. the client is no longer read (the loop that read it has returned);
 *   2. what the client is owed goes out;
 *   3. the smtpd's input is closed: its EOF;
 *   4. its output is read to EOF;
 *   5. the client gets EOF, and its side is read to its EOF (a TLS engine
 *      that loses its reader may drop our last bytes);
 *   6. (-e) the smtpds (and s6-ioconnect) are waited for;
 *   7. the end line is written (-v 2);
 *   8. the process exits: with its own status, or (-e) as the smtpd ended.
 * Steps 2 to 5 are the session's, done by the process that serves it
 * (after the relay ran, 2 and 5 were its own); every wait is bounded by
 * the drain bound (below); after a SIGTERM the client is not waited for. */
#ifndef END_H
#define END_H

#include <sys/types.h>
#include "smtp.h"

enum role {
  ROLE_PROXY,      /* serves the session; the smtpd is its parent, the process the
                      super-server started (the default layout): steps 1-5, 7, 8 */
  ROLE_SUPERVISOR, /* -e: the process the super-server started, which serves the
                      session and waits for the smtpds, its children: all steps */
  ROLE_WAITER,     /* -e -S: the same once s6-ioconnect has the session: 6 to 8 */
  ROLE_RELAYER,    /* -e -S: to become s6-ioconnect, or the built-in relay if it
                      cannot: steps 1-5 and 8; the waiter tells the end */
  ROLE_SMTPD       /* to become the smtpd: its one end here is a failed exec (8) */
};

/* This process's role from now; relayer: s6-ioconnect's pid (ROLE_WAITER). */
void end_role(enum role r, pid_t relayer);

/* The engine, while it is in the middle (0 once the relay has the
 * session): what the client is owed comes from it, and the client's end
 * is end()'s to do. */
void end_engine(struct smtp *e);

/* The drain bound, ms (0: none): once the smtpd's output has ended (or,
 * if it has not, once the end begins), everything ends within it. */
void end_drain_bound(unsigned long ms);
/* The smtpd's output has ended: the bound starts, once. */
void end_smtpd_ended(void);
/* -e: a new smtpd serves: none has ended. */
void end_smtpd_renewed(void);
/* When the bound runs out: 0 while it has not started or if there is none. */
long long end_drain_deadline(void);
/* Whether it has started. */
int end_draining(void);

/* What a signal means, for io_signals(): children that ended are reaped;
 * the first SIGTERM ends the session where it is served (for ROLE_WAITER:
 * it is passed on to s6-ioconnect), and each later one is passed on to
 * the smtpd. Returns nonzero once a SIGTERM has come. */
int end_react(void);

/* The end: why in the end line, code the exit status where the smtpd's
 * is not passed on (see the man page's EXIT STATUS). */
void end(int code, const char *why);

/* A fatal line, then end(code, "fatal error"). */
void fatal(int code, const char *fmt, ...);

#endif
