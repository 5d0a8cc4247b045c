/* smtp.h: the SMTP engine. It does no I/O: the caller reads bytes into the
 * room the engine offers, tells it how many arrived, and writes out what the
 * engine hands back. Everything is bounded by the sizes below. */
#ifndef SMTP_H
#define SMTP_H

#include <stddef.h>

#define SMTP_CMDMAX 512      /* longest command line, CRLF included (RFC 5321 4.5.3.1.4) */
#define SMTP_REPLYMAX 8192   /* longest reply line from the smtpd we frame */
#define SMTP_CINSIZE 4096    /* client bytes not yet parsed */
#define SMTP_SINSIZE SMTP_REPLYMAX
#define SMTP_COUTSIZE (2 * SMTP_REPLYMAX + 64)
#define SMTP_SOUTSIZE (SMTP_CINSIZE + SMTP_CMDMAX + 8)
#define SMTP_QMAX 64         /* replies owed to the client before we stop reading it */
#define SMTP_MAXERRORS 10    /* malformed command lines before 421 */

/* flags for smtp_init() */
#define SMTP_REQUIRETLS 1    /* -r: nothing but EHLO/HELO/STARTTLS/NOOP/RSET/HELP/QUIT before TLS */
#define SMTP_PLAINAUTH 2     /* -a: AUTH allowed (and advertised) before TLS */

/* what smtp_status() asks of the caller */
enum smtp_status {
  SMTP_RUN,      /* keep moving bytes */
  SMTP_STARTTLS, /* once smtp_client_output() is empty: do the handshake, then smtp_tls_started() */
  SMTP_RELAY,    /* decision made: move the leftovers (smtp_leftover()) and relay raw bytes */
  SMTP_CLOSE     /* once smtp_client_output() is empty: end with smtp_exitcode() */
};

/* why the engine closed; the caller words the log line */
enum smtp_why {
  SMTP_WHY_NONE,
  SMTP_WHY_SERVEREOF,     /* smtpd closed its output */
  SMTP_WHY_SERVERBROKEN,  /* smtpd sent something that is not an SMTP reply */
  SMTP_WHY_SERVERLONG,    /* smtpd sent a reply line over SMTP_REPLYMAX */
  SMTP_WHY_ERRORS,        /* client sent too many malformed lines */
  SMTP_WHY_TIMEOUT        /* smtp_timeout() was called */
};

enum smtp_phase { /* internal; exposed only so that struct smtp can be static */
  SMTP_P_PLAIN, SMTP_P_TLSWAIT, SMTP_P_HANDSHAKE, SMTP_P_GATE, SMTP_P_DRAIN,
  SMTP_P_RELAY, SMTP_P_CLOSE
};

struct smtp {
  unsigned flags;
  enum smtp_phase phase;
  enum smtp_why why;
  int exitcode;
  int tls;               /* handshake done */
  int cin_eof, sin_eof;
  int skipping;          /* discarding an overlong client line up to its LF */
  int tainted;           /* client bytes arrived while STARTTLS was pending */
  int errors;
  /* reply being framed */
  int inreply;           /* a reply's first line has been seen, not its last */
  int rkind;             /* queue kind the reply answers, or -1: unsolicited */
  int rewrite;           /* it is a 2xx EHLO reply we edit */
  int sawstarttls;
  char rcode[3];
  size_t held;           /* start in cout of the line held back while rewriting */
  int hasheld, heldbare;
  /* replies owed to the client, oldest first */
  unsigned char q[SMTP_QMAX];
  unsigned qhead, qlen;
  unsigned qspecial;     /* entries in q that need the engine (not plain forwarded) */
  size_t cinlen, sinlen, coutlen, coutcommit, soutlen;
  char cin[SMTP_CINSIZE];
  char sin[SMTP_SINSIZE];
  char cout[SMTP_COUTSIZE];
  char sout[SMTP_SOUTSIZE];
};

/* Start a session: the smtpd's greeting is the first reply owed. */
void smtp_init(struct smtp *e, unsigned flags);

/* Where to put client bytes: returns the room (0: do not read the client now)
 * and sets *p. After reading n > 0 bytes there, call smtp_client_input(). */
size_t smtp_client_room(struct smtp *e, char **p);
void smtp_client_input(struct smtp *e, size_t n);
/* The client closed its side (or its read failed). */
void smtp_client_eof(struct smtp *e);

/* The same for bytes from the smtpd. */
size_t smtp_server_room(struct smtp *e, char **p);
void smtp_server_input(struct smtp *e, size_t n);
void smtp_server_eof(struct smtp *e);

/* Bytes to send: returns how many are ready at *p. After writing n of them,
 * call the matching _sent(). */
size_t smtp_client_output(struct smtp *e, const char **p);
void smtp_client_sent(struct smtp *e, size_t n);
size_t smtp_server_output(struct smtp *e, const char **p);
void smtp_server_sent(struct smtp *e, size_t n);

/* True once nothing more will ever go to the smtpd: the caller closes its stdin. */
int smtp_server_done(const struct smtp *e);

enum smtp_status smtp_status(const struct smtp *e);
int smtp_exitcode(const struct smtp *e);
enum smtp_why smtp_why(const struct smtp *e);

/* The handshake succeeded: the client now speaks through TLS and must EHLO again. */
void smtp_tls_started(struct smtp *e);
/* No traffic for too long: queues 421 and closes. */
void smtp_timeout(struct smtp *e);

/* In SMTP_RELAY: the bytes the engine still holds, to be sent before any
 * others. Each direction is two pieces, in order. */
struct smtp_leftover {
  const char *toclient[2]; size_t toclientlen[2];
  const char *toserver[2]; size_t toserverlen[2];
};
void smtp_leftover(const struct smtp *e, struct smtp_leftover *l);

#endif
