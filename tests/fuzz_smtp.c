/* libFuzzer target: drives the SMTP engine with interleaved client and
 * server bytes and events, and checks its invariants after every step.
 *
 * Input: one byte of flags, then records [op][len][len bytes of data]:
 * op % 4 == 0 client bytes, 1 smtpd bytes, 2 take up to len bytes of each
 * output (0: all), 3 an event chosen by len % 4: client EOF, smtpd EOF,
 * timeout, handshake done (when the engine asked for one).
 *
 * With flag 4 the smtpd is a model that frames what it gets as a real one
 * would and answers each command once (op 1 then says how: len picks the
 * code), and the client's bytes are framed by an oracle written apart from
 * the engine. Then the promises are checked, not only memory safety:
 * every command line and every BDAT gets exactly one reply, in order;
 * content reaches the smtpd byte for byte and is never taken for commands;
 * no AUTH reaches the smtpd before TLS without -a; nothing after STARTTLS
 * reaches the smtpd; the 220 is only ever given to a STARTTLS that ended
 * what the client had sent.
 *
 * Flag 8 turns -L on (and lets flag 2, -a, through, since the engine then
 * stays): no end of data may reach the smtpd that did not come from the
 * client as CRLF.CRLF, even for an smtpd that takes a bare CR or LF for a
 * line's end or drops NULs: in the DATA content the smtpd gets, every LF
 * follows a CR, every CR but a last one is followed by LF, and no NUL
 * begins a line or follows its first dot. A message is only refused for
 * such bytes in what the client sent.
 *
 * Flag 16 turns -e on: at STARTTLS the smtpd hears no RSET, and after the
 * handshake a new model smtpd greets, which the client must never see.
 *
 * BDAT is framed by RFC 3030's grammar, "BDAT" SP 1*DIGIT [SP "LAST"],
 * by the oracle and the model alike; with flag 32 the model reads chunk
 * sizes modulo 2^32, as exim does. Whenever the model has had all the
 * engine sent it, the two must agree on whether a chunk is being passed
 * and how much of it is left: an engine that frames a chunk the smtpd does
 * not (or the reverse) is a finding, whatever the chunk holds. Under -L
 * the smtpd's DATA content never ends with a CR: the next byte could make
 * it a bare one.
 *
 * Flag 64 turns SMTP_NOTLS on (UCSPITLS=-): the engine never asks for a
 * handshake, and no STARTTLS reaches the smtpd (the model's or another). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "smtp.h"

static struct smtp e;

#define invariant(cond) do { if (!(cond)) { \
  fprintf(stderr, "fuzz_smtp.c:%d: invariant broken: %s\n", __LINE__, #cond); abort(); } } while (0)

static void check(unsigned long long fed_client, unsigned long long to_server,
                  unsigned long long rsets)
{
  const char *p;
  size_t n = smtp_client_output(&e, &p);
  invariant(e.qlen <= SMTP_QMAX);
  invariant(e.cinlen <= SMTP_CINSIZE && e.sinlen <= SMTP_SINSIZE);
  invariant(e.coutlen <= SMTP_COUTSIZE && e.soutlen <= SMTP_SOUTSIZE);
  invariant(e.coutcommit <= e.coutlen);
  /* the client is only ever given whole reply lines */
  invariant(!n || p[n - 1] == '\n');
  /* nothing reaches the smtpd that the client did not send, but our RSETs */
  invariant(to_server <= fed_client + 6 * rsets);
}

/* --- framing shared by the oracle and the model: SMTP's, not the engine's --- */

#define LOGMAX (1 << 17)
#define CMDS 4096

static int lc(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static int verb(const char *s, size_t n, const char *w)
{
  size_t i, k = strlen(w);
  if (n < k) return 0;
  for (i = 0; i < k; i++) if (lc((unsigned char)s[i]) != w[i]) return 0;
  return n == k || s[k] == ' ' || s[k] == '\r';
}

static int mod32;                 /* flag 32: the model reads sizes modulo 2^32 */

/* "BDAT" SP 1*DIGIT [SP "LAST"] CRLF: the chunk size, or -1. With wrap,
 * the size modulo 2^32; else sizes past 64 bits saturate. */
static long long bdat_size(const char *s, size_t n, int wrap)
{
  size_t i;
  unsigned long long v = 0;
  if (n < 8 || !verb(s, n, "bdat") || s[4] != ' ' || s[n - 2] != '\r') return -1;
  for (i = 0; i + 2 < n; i++) if (s[i] == '\r' || !s[i]) return -1;
  if (n > SMTP_CMDMAX) return -1;
  for (i = 5; i < n - 2 && s[i] >= '0' && s[i] <= '9'; i++)
    v = wrap ? (v * 10 + (unsigned)(s[i] - '0')) & 0xffffffffULL
      : v > (~0ULL - 9) / 10 ? ~0ULL : v * 10 + (unsigned)(s[i] - '0');
  if (i == 5) return -1;
  if (i < n - 2 && !(n - 2 - i == 5 && s[i] == ' ' && verb(s + i + 1, 4, "last"))) return -1;
  return v > (1ULL << 62) ? (long long)(1ULL << 62) : (long long)v; /* never all read */
}

static long long bdat(const char *s, size_t n) { return bdat_size(s, n, 0); }

/* Content up to and including CRLF.CRLF: bytes taken (all n if no end).
 * hist holds the last five bytes; content starts after a CRLF. */
static size_t dataend(const char *s, size_t n, char hist[5], int *ended)
{
  size_t i;
  for (i = 0; i < n; i++) {
    memmove(hist, hist + 1, 4);
    hist[4] = s[i];
    if (!memcmp(hist, "\r\n.\r\n", 5)) { *ended = 1; return i + 1; }
  }
  return n;
}

/* One side's stream, as SMTP frames it: the client's as the oracle sees
 * it, the engine's output as the model smtpd sees it. */
enum { F_CMD, F_DATAWAIT, F_DATA, F_CHUNK };
struct side {
  char log[LOGMAX];
  size_t loglen, pos;    /* had, framed so far */
  int mode;
  long long chunk;       /* BDAT octets still to come */
  char hist[5];
  char content[LOGMAX];  /* the DATA content seen */
  size_t contentlen;
  size_t guarded;        /* -L: content checked so far */
};
static struct side client_side, smtpd_side;

static void side_reset(struct side *d)
{
  d->loglen = d->pos = d->contentlen = d->guarded = 0;
  d->mode = F_CMD;
}

static void side_data(struct side *d)
{
  d->mode = F_DATA;
  memcpy(d->hist, "xxx\r\n", 5);
}

/* Takes the content at d's position, if that is what comes: returns 0 when
 * a command line (or nothing) comes, else 1, and 2 when DATA just ended. */
static int side_content(struct side *d)
{
  const char *s = d->log + d->pos;
  size_t left = d->loglen - d->pos, k;
  int ended = 0;
  if (!left) return 0;
  if (d->mode == F_DATA) {
    k = dataend(s, left, d->hist, &ended);
    memcpy(d->content + d->contentlen, s, k);
    d->contentlen += k;
    if (ended) d->mode = F_CMD;
  } else if (d->mode == F_CHUNK) {
    k = (size_t)d->chunk < left ? (size_t)d->chunk : left;
    d->chunk -= (long long)k;
    if (!d->chunk) d->mode = F_CMD;
  } else return 0;
  d->pos += k;
  return 1 + ended;
}

/* The next whole command line at d's position, taken, or 0. */
static const char *side_line(struct side *d, size_t *len)
{
  const char *s = d->log + d->pos;
  const char *lf = d->loglen > d->pos ? memchr(s, '\n', d->loglen - d->pos) : 0;
  long long chunk;
  if (!lf || d->mode != F_CMD) return 0;
  *len = (size_t)(lf - s) + 1;
  d->pos += *len;
  if ((chunk = bdat_size(s, *len, d == &smtpd_side && mod32)) > 0) {
    d->chunk = chunk;
    d->mode = F_CHUNK;
  }
  return s;
}

/* -L: the bytes of d's DATA content up to to hold nothing an smtpd could
 * take for an end of data but CRLF.CRLF (see above); returns 0 at the
 * first that could. Content starts after DATA's CRLF. */
static char byte_at(const struct side *d, long i)
{
  return i >= 0 ? d->content[i] : i == -1 ? '\n' : '\r';
}

static int clean(const struct side *d, size_t from, size_t to)
{
  long i;
  for (i = (long)from; i < (long)to; i++) {
    char c = byte_at(d, i), p = byte_at(d, i - 1), q = byte_at(d, i - 2);
    if (c == '\n' && p != '\r') return 0;
    if (p == '\r' && c != '\n') return 0;
    if (c == 0 && (p == '\n' || (p == '.' && q == '\n'))) return 0;
  }
  return 1;
}

/* --- the client oracle --- */

enum { K_OTHER, K_DATA, K_BDAT, K_END, K_AUTH, K_STARTTLS, K_EHLO };
static struct { int kind; int code; size_t start, end; } cmd[CMDS];
static unsigned ncmd, nreplies;
static size_t starttls_end;          /* log offset right after the last STARTTLS line */
/* for each client byte, the feed that brought it, and whether it came while
 * STARTTLS waited: a command that starts in the feed of a STARTTLS refused
 * as pipelined, after it, or that came while STARTTLS waited, never runs */
static unsigned short feedof[LOGMAX];
static unsigned char waitfed[LOGMAX];
static unsigned nfeeds;
static size_t refused_end;           /* end of the last STARTTLS refused as pipelined */
static int refused;

static void oracle_frame(void)
{
  struct side *d = &client_side;
  while (ncmd < CMDS) {
    size_t len;
    const char *s;
    int c = side_content(d);
    if (c) {
      if (c == 2) cmd[ncmd++].kind = K_END;
      continue;
    }
    if (!(s = side_line(d, &len))) return;
    cmd[ncmd].code = 0;
    cmd[ncmd].start = d->pos - len;
    cmd[ncmd].end = d->pos;
    cmd[ncmd].kind = bdat(s, len) >= 0 ? K_BDAT : verb(s, len, "data") ? K_DATA
      : verb(s, len, "auth") ? K_AUTH : verb(s, len, "starttls") ? K_STARTTLS : K_OTHER;
    if (cmd[ncmd].kind == K_DATA) d->mode = F_DATAWAIT;
    if (cmd[ncmd].kind == K_STARTTLS) starttls_end = d->pos;
    ncmd++;
  }
}

/* One whole reply reached the client: it answers the oldest command. */
static void oracle_reply(const char *code)
{
  unsigned i;
  size_t at;
  if (!memcmp(code, "421", 3)) return; /* the engine closing: the model never says it */
  /* -L: the refusal of content answers it, and it is over */
  if (client_side.mode == F_DATA && !memcmp(code, "550 5.5.2 Message ref", 21)) {
    invariant(e.flags & SMTP_GUARD);
    client_side.mode = F_CMD;
    return;
  }
  i = nreplies++;
  if (!i) return; /* the greeting */
  invariant(i - 1 < ncmd); /* never a reply to a command not sent */
  cmd[i - 1].code = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
  at = cmd[i - 1].start;
  /* the proxy's own refusals are 500, 501, 503: the model never says them */
  if (waitfed[at] || (refused && at >= refused_end && feedof[at] == feedof[refused_end - 1]))
    invariant(cmd[i - 1].code == 500 || cmd[i - 1].code == 501 || cmd[i - 1].code == 503);
  if (cmd[i - 1].kind == K_STARTTLS && !memcmp(code, "503 5.5.1 STARTTLS must", 23)) {
    refused = 1;
    refused_end = cmd[i - 1].end;
  }
  if (cmd[i - 1].kind == K_DATA) {
    if (cmd[i - 1].code == 354) side_data(&client_side);
    else client_side.mode = F_CMD;
    oracle_frame();
  }
}

static char rline[24];
static size_t rlinelen;

static void oracle_output(const char *p, size_t n)
{
  size_t i;
  for (i = 0; i < n; i++) {
    if (rlinelen < sizeof rline) rline[rlinelen++] = p[i];
    if (p[i] != '\n') continue;
    invariant(rlinelen >= 4);
    if (rline[3] != '-') oracle_reply(rline);
    rlinelen = 0;
  }
}

/* --- the model smtpd --- */

static int mpending[CMDS];       /* what each command waiting for its reply is */
static unsigned mhead, mtail;

static void model_frame(void)
{
  struct side *d = &smtpd_side;
  while (mtail < CMDS) {
    size_t len;
    const char *s;
    int inchunk = d->mode == F_CHUNK;
    int c = side_content(d);
    if (c) {
      if (c == 2) mpending[mtail++] = K_END;
      /* a BDAT is answered once its chunk is in, as RFC 3030 asks */
      if (inchunk && d->mode == F_CMD) mpending[mtail++] = K_OTHER;
      continue;
    }
    if (!(s = side_line(d, &len))) return;
    /* no password in clear: AUTH reaches the smtpd only over TLS or with -a */
    if (verb(s, len, "auth")) invariant(e.tls || (e.flags & SMTP_PLAINAUTH));
    if (d->mode == F_CHUNK) continue;
    if (verb(s, len, "starttls")) invariant(!(e.flags & SMTP_NOTLS));
    mpending[mtail++] = verb(s, len, "data") ? K_DATA : verb(s, len, "ehlo") ? K_EHLO : K_OTHER;
  }
}

static char mout[1 << 16];
static size_t moutlen;
static int fresh;                 /* -e: a new model smtpd after TLS */

/* answers the oldest command the model holds; how, chosen by c */
static void model_answer(unsigned c)
{
  const char *r;
  int kind;
  if (mhead == mtail) return;
  kind = mpending[mhead++];
  if (kind == K_DATA) {
    r = c % 3 ? "354 go\r\n" : "554 no\r\n";
    if (c % 3) side_data(&smtpd_side);
  } else if (kind == K_EHLO)
    r = c & 1 ? "250-mx\r\n250-CHUNKING\r\n250-AUTH PLAIN\r\n250-ETRN\r\n250 STARTTLS\r\n"
      : "250-mx\r\n250 PIPELINING\r\n";
  else r = c % 5 == 0 ? "550 no\r\n" : c % 7 == 0 ? "250-a\r\n250 b\r\n" : "250 ok\r\n";
  if (moutlen + strlen(r) <= sizeof mout) {
    memcpy(mout + moutlen, r, strlen(r));
    moutlen += strlen(r);
  }
  model_frame();
}

static void model_deliver(void)
{
  char *p;
  size_t room = smtp_server_room(&e, &p);
  if (room > moutlen) room = moutlen;
  if (!room) return;
  memcpy(p, mout, room);
  memmove(mout, mout + room, moutlen - room);
  moutlen -= room;
  smtp_server_input(&e, room);
}

static void flush_model(void)
{
  const char *q;
  size_t k;
  int rounds;
  for (rounds = 0; rounds < 64; rounds++) {
    k = smtp_client_output(&e, &q);
    if (k) { oracle_output(q, k); smtp_client_sent(&e, k); }
    k = smtp_server_output(&e, &q);
    if (k && smtpd_side.loglen + k <= LOGMAX) {
      memcpy(smtpd_side.log + smtpd_side.loglen, q, k);
      smtpd_side.loglen += k;
      smtp_server_sent(&e, k);
      model_frame();
    }
    model_deliver();
    /* once STARTTLS is taken, our RSET is the last thing the smtpd gets */
    if (!fresh && (e.phase == SMTP_P_TLSWAIT || e.phase == SMTP_P_HANDSHAKE) && !e.soutlen)
      invariant(smtpd_side.loglen >= 6
                && !memcmp(smtpd_side.log + smtpd_side.loglen - 6, "RSET\r\n", 6));
    if (e.phase == SMTP_P_HANDSHAKE) {
      /* the 220 went only to a STARTTLS with nothing after it */
      invariant(starttls_end == client_side.loglen);
    }
  }
  /* the smtpd has all the engine sent: both frame the same chunk, if any
   * (while the engine frames the client's bytes: not once they go raw) */
  if (!e.soutlen && !e.refused
      && (e.phase == SMTP_P_PLAIN || e.phase == SMTP_P_GATE || e.phase == SMTP_P_COMMANDS)) {
    invariant((e.content == SMTP_C_BDAT) == (smtpd_side.mode == F_CHUNK));
    if (e.content == SMTP_C_BDAT && smtpd_side.chunk < (1LL << 62))
      invariant(e.chunk == (unsigned long long)smtpd_side.chunk);
  }
}

static int modelled(const unsigned char *d, size_t n)
{
  size_t i = 1;
  /* -r or not; -a only with -L: else the relay would take over */
  unsigned flags = (d[0] & 1) | (d[0] & 8 ? SMTP_GUARD | (d[0] & 2) : 0) | (d[0] & 16 ? SMTP_FRESH : 0)
                   | (d[0] & 64 ? SMTP_NOTLS : 0);
  mod32 = (d[0] & 32) != 0;
  memset(&cmd, 0, sizeof cmd);
  ncmd = nreplies = 0;
  side_reset(&client_side);
  side_reset(&smtpd_side);
  moutlen = rlinelen = 0;
  nfeeds = 0;
  refused = 0;
  mhead = mtail = 0;
  starttls_end = (size_t)-1;
  fresh = (flags & SMTP_FRESH) != 0;
  smtp_init(&e, flags);
  memcpy(mout, "220 mx\r\n", 8);
  moutlen = 8;
  model_deliver();
  while (i + 2 <= n) {
    unsigned op = d[i] % 4, len = d[i + 1];
    const unsigned char *data = d + i + 2;
    size_t avail = n - i - 2, room, j;
    char *p;
    if (op == 0 && len > avail) len = (unsigned)avail;
    i += 2 + (op == 0 ? len : 0);
    if (op == 0) {
      int waiting = e.phase == SMTP_P_TLSWAIT;
      room = smtp_client_room(&e, &p);
      if (room > len) room = len;
      if (room && client_side.loglen + room <= LOGMAX) {
        for (j = client_side.loglen; j < client_side.loglen + room; j++) {
          feedof[j] = (unsigned short)nfeeds;
          waitfed[j] = (unsigned char)waiting;
        }
        nfeeds++;
        memcpy(client_side.log + client_side.loglen, data, room);
        client_side.loglen += room;
        memcpy(p, data, room);
        smtp_client_input(&e, room);
        if (waiting) starttls_end = (size_t)-1; /* bytes after STARTTLS: no 220 */
        oracle_frame();
      }
    } else if (op == 1) model_answer(len);
    else if (op == 2) flush_model();
    else if (len % 4 == 3 && smtp_status(&e) == SMTP_STARTTLS) {
      smtp_tls_started(&e);
      starttls_end = (size_t)-1;
      if (fresh) {
        /* a new smtpd: nothing of the old one's, and a greeting of its own */
        mhead = mtail = 0;
        smtpd_side.pos = smtpd_side.loglen;
        smtpd_side.mode = F_CMD;
        memcpy(mout, "220 new\r\n", 9);
        moutlen = 9;
        model_deliver();
      }
    }
    flush_model();
    /* a message is refused only for what the client sent */
    if (e.phase == SMTP_P_CLOSE && e.why == SMTP_WHY_CONTENT)
      invariant((flags & SMTP_GUARD) && !clean(&client_side, 0, client_side.contentlen));
    if (e.phase == SMTP_P_HANDOVER || e.phase == SMTP_P_RELAY || e.phase == SMTP_P_CLOSE
        || e.phase == SMTP_P_GONE || e.errors >= SMTP_MAXERRORS)
      return 0; /* the engine's part, or its exact count, is over */
    invariant(nreplies <= ncmd + 1);
    if (flags & SMTP_GUARD) {
      /* no end of data but CRLF.CRLF reaches the smtpd, whatever it takes for one */
      invariant(clean(&smtpd_side, smtpd_side.guarded, smtpd_side.contentlen));
      smtpd_side.guarded = smtpd_side.contentlen;
      invariant(!smtpd_side.contentlen || smtpd_side.content[smtpd_side.contentlen - 1] != '\r');
    }
    /* content: what the smtpd got is what the client sent as content */
    invariant(smtpd_side.contentlen <= client_side.contentlen
              && !memcmp(smtpd_side.content, client_side.content, smtpd_side.contentlen));
  }
  /* let everything settle: then every command has had its one reply */
  for (i = 0; i < 4 * CMDS && mhead != mtail; i++) {
    model_answer((unsigned)i);
    flush_model();
  }
  flush_model();
  if (e.phase == SMTP_P_PLAIN || e.phase == SMTP_P_COMMANDS || e.phase == SMTP_P_GATE) {
    /* a BDAT is answered once its chunk is in */
    if (client_side.mode != F_DATAWAIT && client_side.mode != F_CHUNK && ncmd < CMDS
        && e.errors < SMTP_MAXERRORS)
      invariant(nreplies == ncmd + 1);
    invariant(smtpd_side.contentlen == client_side.contentlen || e.content != SMTP_C_NONE);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *d, size_t n)
{
  unsigned long long fed = 0, sent = 0, rsets = 0;
  int linestart = 1;
  size_t i = 1;
  if (!n) return 0;
  if (d[0] & 4) return modelled(d, n);
  smtp_init(&e, (d[0] & 3) | (d[0] & 8 ? SMTP_GUARD : 0) | (d[0] & 16 ? SMTP_FRESH : 0)
              | (d[0] & 64 ? SMTP_NOTLS : 0));
  while (i + 2 <= n) {
    unsigned op = d[i] % 4, len = d[i + 1];
    const unsigned char *data = d + i + 2;
    enum smtp_status before = smtp_status(&e);
    size_t avail = n - i - 2, room;
    char *p;
    const char *q;
    if (op < 2 && len > avail) len = (unsigned)avail;
    i += 2 + (op < 2 ? len : 0);
    switch (op) {
    case 0:
      room = smtp_client_room(&e, &p);
      if (room > len) room = len;
      if (room) {
        memcpy(p, data, room);
        smtp_client_input(&e, room);
        fed += room;
      }
      break;
    case 1:
      room = smtp_server_room(&e, &p);
      if (room > len) room = len;
      if (room) {
        memcpy(p, data, room);
        smtp_server_input(&e, room);
      }
      break;
    case 2: {
      size_t j, k = smtp_client_output(&e, &q);
      if (len && k > len) k = len;
      for (j = 0; j < k; j++) { /* each line a reply code first */
        if (linestart) invariant(q[j] >= '2' && q[j] <= '5');
        linestart = q[j] == '\n';
      }
      if (k) smtp_client_sent(&e, k);
      k = smtp_server_output(&e, &q);
      if (len && k > len) k = len;
      if (k) {
        for (j = 0; j + 6 <= k; j++) if (!memcmp(q + j, "RSET\r\n", 6)) rsets++;
        sent += k;
        smtp_server_sent(&e, k);
      }
      break;
    }
    default:
      switch (len % 4) {
      case 0: smtp_client_eof(&e); break;
      case 1: smtp_server_eof(&e); break;
      case 2: if (smtp_status(&e) != SMTP_CLOSE) smtp_timeout(&e); break;
      default:
        if (smtp_status(&e) == SMTP_STARTTLS) smtp_tls_started(&e);
        break;
      }
    }
    if (e.flags & SMTP_NOTLS) invariant(smtp_status(&e) != SMTP_STARTTLS);
    /* from the 220 on, the client is not read until the handshake is done */
    if (before == SMTP_STARTTLS && smtp_status(&e) == SMTP_STARTTLS)
      invariant(smtp_client_room(&e, &p) == 0);
    if (smtp_status(&e) == SMTP_RELAY) return 0; /* the engine's part is over */
    check(fed, sent, rsets);
  }
  return 0;
}
