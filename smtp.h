/* smtp.h: the SMTP engine. It does no I/O: the caller reads bytes into the
 * room the engine offers, tells it how many arrived, and writes out what the
 * engine hands back. Everything is bounded by the sizes below. */
#ifndef SMTP_H
#define SMTP_H

#include <stddef.h>

/* RFC 5321 4.5.3.1.4 lets extensions raise the 512 octets of a command
 * line (SIZE, DSN, AUTH=, SMTPUTF8 add about 640): 2048 is what Postfix
 * takes. RFC 4954 4: an AUTH line may be 12288 octets. CRLF included. */
#define SMTP_CMDMAX 2048
#define SMTP_AUTHMAX 12288
#define SMTP_REPLYMAX 8192   /* longest reply line from the smtpd we frame */
#define SMTP_CINSIZE 16384   /* client bytes not yet parsed: one AUTH line and more */
#define SMTP_SINSIZE SMTP_REPLYMAX
#define SMTP_COUTSIZE (2 * SMTP_REPLYMAX + 256)
#define SMTP_RESERVE 64      /* room in cout kept for the one 421 that ends a session */
#define SMTP_SOUTSIZE 16384
#define SMTP_QMAX 64         /* replies owed to the client before we stop parsing it */
#define SMTP_MAXERRORS 10    /* malformed lines and unknown verbs before 421 */
/* The keywords of the smtpd's last EHLO reply, kept to forward the verbs it
 * offered: NUL-separated, lower case, in a store as long as a command line
 * (a verb longer than that could never be sent). A reply whose keywords do
 * not all fit makes every verb that looks like a keyword pass. */
#define SMTP_KEYSPACE SMTP_CMDMAX
/* The largest BDAT chunk forwarded: the largest a C int holds, so that no
 * smtpd reads it otherwise (exim reads sizes modulo 2^32). Larger chunks
 * are refused and consumed. */
#define SMTP_CHUNKMAX 2147483647ULL
/* RFC 5321 4.5.3.2.6: the client waits 10 minutes for the reply to the end
 * of message content; the proxy waits at least as long (ms) */
#define SMTP_FINALWAIT 600000

/* flags for smtp_init() */
#define SMTP_REQUIRETLS 1    /* -r: nothing but EHLO/HELO/STARTTLS/NOOP/RSET/HELP/QUIT before TLS */
#define SMTP_PLAINAUTH 2     /* -a: AUTH allowed (and advertised) before TLS */
#define SMTP_FRESH 4         /* -e: a new smtpd serves after TLS: no RSET at STARTTLS,
                                and its greeting is the engine's, not the client's */
#define SMTP_GUARD 8         /* -L: only CRLF.CRLF ends DATA; a bare CR or LF (or a NUL
                                where a dot line could hide) in content refuses the
                                message; the engine stays in the middle after TLS too */
#define SMTP_NOTLS 16        /* STARTTLS not offered: the session starts declined, the
                                engine in the middle (STARTTLS stripped from EHLO replies
                                and refused, AUTH hidden unless SMTP_PLAINAUTH) */

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
  SMTP_WHY_QUIT,          /* the client said QUIT and the smtpd closed: exit 0 */
  SMTP_WHY_CLIENTEOF,     /* the client closed without QUIT, then the smtpd: exit 1 */
  SMTP_WHY_SERVEREOF,     /* smtpd closed its output on its own: exit 1 if replies were owed */
  SMTP_WHY_SERVER421,     /* smtpd answered our RSET with 421 */
  SMTP_WHY_GREETING,      /* with SMTP_FRESH, the smtpd after TLS greeted with no 2xx */
  SMTP_WHY_SERVERBROKEN,  /* smtpd sent something that is not an SMTP reply */
  SMTP_WHY_SERVERLONG,    /* smtpd sent a reply line over SMTP_REPLYMAX */
  SMTP_WHY_ERRORS,        /* client sent too many malformed lines */
  SMTP_WHY_TIMEOUT,       /* smtp_timeout() was called */
  SMTP_WHY_CONTENT,       /* -L: a message refused for its line endings (smtp_badcontent()) */
  SMTP_WHY_STRAY,         /* the smtpd sent a reply that answers no command (smtp_stray()) */
  SMTP_WHY_BDAT,          /* the client sent a BDAT whose chunk cannot be framed */
  SMTP_WHY_HTTP           /* the client sent an HTTP request line */
};

/* The phases of a session; internal, exposed only so that struct smtp can
 * be static. */
enum smtp_phase {
  SMTP_P_PLAIN,     /* before TLS, nothing decided: STARTTLS is offered */
  SMTP_P_TLSWAIT,   /* STARTTLS taken: the reply to our RSET (none with SMTP_FRESH),
                       then the 220, awaited */
  SMTP_P_HANDSHAKE, /* 220 sent: the caller does the handshake */
  SMTP_P_GATE,      /* TLS up, the client's new EHLO awaited */
  SMTP_P_COMMANDS,  /* decided, and the engine reads commands to the end: TLS
                       declined, or any session under -L */
  SMTP_P_HANDOVER,  /* decided for the relay (after TLS, or with -a): client
                       bytes go raw, the replies still to edit or order go out */
  SMTP_P_RELAY,     /* the caller relays raw bytes */
  SMTP_P_GONE,      /* the smtpd has gone: a 421 per reply owed, then close */
  SMTP_P_CLOSE
};

/* What the client's bytes are, in PLAIN, GATE and COMMANDS: command lines, or
 * message content that is never parsed. */
enum smtp_content {
  SMTP_C_NONE,  /* command lines */
  SMTP_C_DATA,  /* after 354: content up to CRLF.CRLF, passed on */
  SMTP_C_BDAT,  /* a BDAT chunk's counted octets, passed on */
  SMTP_C_SKIP   /* the chunk of a BDAT we refused: counted and dropped */
};

struct smtp {
  unsigned flags;
  enum smtp_phase phase;
  enum smtp_why why;
  int exitcode;
  int tls;               /* handshake done */
  int declined;          /* HELO, MAIL or AUTH came first: STARTTLS is off */
  int cin_eof, sin_eof;
  int skipping;          /* discarding an overlong client line up to its LF */
  int unframed;          /* a BDAT we cannot frame: the client is read no more */
  size_t poison;         /* cin's first bytes that came after a STARTTLS: refused */
  int errors;
  int quit;              /* the client sent QUIT */
  char lastcode[3];      /* code of the smtpd's last complete reply */
  /* message content */
  enum smtp_content content;
  int datawait;          /* DATA (or AUTH) forwarded: client bytes wait for its reply */
  int authresp;          /* -L: the smtpd said 334: the next client line is an AUTH response */
  int refused;           /* -L: the message was refused: nothing more goes to the smtpd */
  char badseq[48];       /* and the bytes that did it, for the log: "<LF>.<LF>" */
  char stray[64];        /* the start of a reply that answered no command, for the log */
  int dstate;            /* where the DATA scanner is in a line */
  unsigned long long chunk; /* BDAT octets still to come */
  int direct;            /* the last room offered was in sout: content lands there */
  /* the smtpd's last EHLO reply */
  int chunking;
  int keysfull;          /* a keyword did not fit: every keyword-like verb passes */
  size_t keyslen;
  char keys[SMTP_KEYSPACE]; /* lower case, each NUL-terminated */
  /* reply being framed */
  int inreply;           /* a reply's first line has been seen, not its last */
  int rkind;             /* queue kind the reply answers, or -1: unsolicited */
  int rewrite;           /* it is a 2xx EHLO reply we edit */
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
 * and sets *p. After reading n > 0 bytes there, call smtp_client_input()
 * before any other call. In message content the room is where the bytes go
 * to the smtpd, so that content is not copied. */
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
/* With SMTP_WHY_CONTENT: the bytes that refused the message, written out
 * ("<CR><LF>.<LF>"): the scanner's state before them, then those of them
 * that came in the same read and can make an end of data. */
const char *smtp_badcontent(const struct smtp *e);
/* With SMTP_WHY_STRAY: the first line of the reply that answered no
 * command, without its CRLF, bytes outside printable ASCII as '?'. */
const char *smtp_stray(const struct smtp *e);
/* True while the client waits for the reply to the end of its message
 * content (DATA's final dot, BDAT LAST): the caller's idle bound is then
 * at least SMTP_FINALWAIT. */
int smtp_final_reply_owed(const struct smtp *e);

/* The handshake succeeded: the client now speaks through TLS and must EHLO
 * again. Whatever the smtpd sent before is dropped (RFC 3207 4.2): returns
 * how many bytes, for the log; the caller drops what it has read since the
 * 220 as well. With SMTP_FRESH the caller has started a new smtpd: its
 * greeting is awaited and kept from the client, whose commands wait for it;
 * one that is not 2xx closes the session with a 421 (SMTP_WHY_GREETING). */
size_t smtp_tls_started(struct smtp *e);
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
