/* smtp.c: the SMTP engine. It frames the client's command lines and the
 * smtpd's replies, decides what to forward, what to answer itself and when
 * the session leaves the proxy's hands, and keeps every reply in command
 * order (RFC 2920). No I/O happens here. */
#include <string.h>
#include "smtp.h"

/* What a queue entry owes the client. Values from Q_LOCAL on are local
 * replies, indexed into replies[]. */
enum { Q_FWD, Q_EHLO, Q_STARTTLS, Q_LOCAL };

enum reply {
  R_TLSFIRST, R_BADSEQ, R_UNKNOWN, R_STARTTLSARGS, R_PIPELINED, R_TLSREADY,
  R_TLSUNAVAIL, R_TOOLONG, R_BADLINE, R_EMPTY, R_EHLOFIRST, R_ERRORS,
  R_GONE, R_BROKEN, R_TIMEOUT
};

static const char *const replies[] = {
  "530 5.7.0 Must issue a STARTTLS command first\r\n",
  "503 5.5.1 Bad sequence of commands: MAIL first\r\n",
  "500 5.5.1 Command unrecognized\r\n",
  "501 5.5.4 STARTTLS takes no parameters\r\n",
  "503 5.5.1 STARTTLS must end a pipelined group: the bytes sent after it were discarded\r\n",
  "220 2.0.0 Ready to start TLS\r\n",
  "454 4.7.0 TLS not available due to temporary reason\r\n",
  "500 5.5.2 Line too long\r\n",
  "500 5.5.2 Syntax error: NUL, bare CR or bare LF in command line\r\n",
  "500 5.5.2 Syntax error: empty command\r\n",
  "503 5.5.1 Send EHLO first\r\n",
  "421 4.7.0 Too many errors, closing connection\r\n",
  "421 4.3.0 Mail server unavailable, closing connection\r\n",
  "421 4.3.0 Mail server error, closing connection\r\n",
  "421 4.4.2 Timeout, closing connection\r\n"
};

static unsigned qkind(const struct smtp *e, unsigned i)
{
  return e->q[(e->qhead + i) % SMTP_QMAX];
}

static void qpush(struct smtp *e, unsigned kind)
{
  e->q[(e->qhead + e->qlen) % SMTP_QMAX] = (unsigned char)kind;
  e->qlen++;
  if (kind != Q_FWD) e->qspecial++;
}

static void qpop(struct smtp *e)
{
  if (qkind(e, 0) != Q_FWD) e->qspecial--;
  e->qhead = (e->qhead + 1) % SMTP_QMAX;
  e->qlen--;
}

/* Appends committed bytes for the client; callers have checked the room. */
static void emit(struct smtp *e, const char *s, size_t n)
{
  memcpy(e->cout + e->coutlen, s, n);
  e->coutlen += n;
  e->coutcommit = e->coutlen;
}

static int emitreply(struct smtp *e, enum reply r)
{
  size_t n = strlen(replies[r]);
  if (SMTP_COUTSIZE - e->coutlen < n) return 0;
  emit(e, replies[r], n);
  return 1;
}

static void forward(struct smtp *e, const char *s, size_t n, unsigned kind)
{
  memcpy(e->sout + e->soutlen, s, n);
  e->soutlen += n;
  qpush(e, kind);
}

/* Ends the proxy's part: only what is committed still goes to the client. */
static void closeup(struct smtp *e, enum smtp_why why, int code)
{
  e->coutlen = e->coutcommit;
  e->hasheld = 0;
  e->phase = SMTP_P_CLOSE;
  e->why = why;
  e->exitcode = code;
}

void smtp_init(struct smtp *e, unsigned flags)
{
  memset(e, 0, sizeof *e);
  e->flags = flags;
  e->phase = SMTP_P_PLAIN;
  e->rkind = -1;
  qpush(e, Q_FWD); /* the greeting */
}

static int lower(int c)
{
  return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static int wordis(const char *s, size_t n, const char *w)
{
  size_t i;
  for (i = 0; i < n; i++)
    if (!w[i] || lower((unsigned char)s[i]) != w[i]) return 0;
  return w[i] == 0;
}

/* --- client commands, before the decision --- */

struct cmd {
  const char *line;   /* the whole line, CRLF included */
  size_t len;
  const char *arg;    /* after the verb's SP; may be empty */
  size_t arglen;
  int last;           /* no byte follows this line in what the client sent */
};

static int gated(const struct smtp *e) { return e->phase == SMTP_P_GATE; }
static int requiretls(const struct smtp *e) { return (e->flags & SMTP_REQUIRETLS) != 0; }
static int plainauth(const struct smtp *e)
{
  return (e->flags & SMTP_PLAINAUTH) && !(e->flags & SMTP_REQUIRETLS);
}

static void local(struct smtp *e, enum reply r) { qpush(e, Q_LOCAL + r); }

/* The session leaves the proxy: from here on client bytes go to the smtpd
 * raw, and once the replies the engine must still edit or order are out,
 * the relay takes over. */
static void decide(struct smtp *e) { e->phase = SMTP_P_DRAIN; }

static void c_ehlo(struct smtp *e, const struct cmd *c)
{
  forward(e, c->line, c->len, Q_EHLO);
  if (gated(e)) decide(e);
}

static void c_helo(struct smtp *e, const struct cmd *c)
{
  forward(e, c->line, c->len, Q_FWD);
  if (gated(e) || !requiretls(e)) decide(e);
}

static void c_mail(struct smtp *e, const struct cmd *c)
{
  if (gated(e)) local(e, R_EHLOFIRST);
  else if (requiretls(e)) local(e, R_TLSFIRST);
  else { forward(e, c->line, c->len, Q_FWD); decide(e); }
}

static void c_auth(struct smtp *e, const struct cmd *c)
{
  if (gated(e)) local(e, R_EHLOFIRST);
  else if (!plainauth(e)) local(e, R_TLSFIRST);
  else { forward(e, c->line, c->len, Q_FWD); decide(e); }
}

static void c_starttls(struct smtp *e, const struct cmd *c)
{
  size_t i;
  if (gated(e)) { local(e, R_EHLOFIRST); return; }
  for (i = 0; i < c->arglen; i++)
    if (c->arg[i] != ' ') { local(e, R_STARTTLSARGS); return; }
  if (!c->last) {
    /* CVE-2011-0411: plaintext pipelined after STARTTLS must never run */
    local(e, R_PIPELINED);
    e->tainted = 1;
    return;
  }
  forward(e, "RSET\r\n", 6, Q_STARTTLS);
  e->phase = SMTP_P_TLSWAIT;
}

static void c_pass(struct smtp *e, const struct cmd *c)
{
  forward(e, c->line, c->len, Q_FWD);
}

static void c_query(struct smtp *e, const struct cmd *c)
{
  if (gated(e)) local(e, R_EHLOFIRST);
  else if (requiretls(e)) local(e, R_TLSFIRST);
  else forward(e, c->line, c->len, Q_FWD);
}

static void c_sequence(struct smtp *e, const struct cmd *c)
{
  (void)c;
  if (gated(e)) local(e, R_EHLOFIRST);
  else if (requiretls(e)) local(e, R_TLSFIRST);
  else local(e, R_BADSEQ);
}

static const struct {
  const char *verb;
  void (*run)(struct smtp *, const struct cmd *);
} commands[] = {
  { "ehlo", c_ehlo }, { "helo", c_helo }, { "mail", c_mail },
  { "auth", c_auth }, { "starttls", c_starttls }, { "rset", c_pass },
  { "noop", c_pass }, { "help", c_pass }, { "quit", c_pass },
  { "vrfy", c_query }, { "expn", c_query }, { "rcpt", c_sequence },
  { "data", c_sequence }, { "bdat", c_sequence }
};

static void command(struct smtp *e, const char *line, size_t len, int last)
{
  struct cmd c;
  size_t n = len - 2, v, i;
  c.line = line;
  c.len = len;
  c.last = last;
  for (v = 0; v < n && line[v] != ' '; v++) ;
  c.arg = line + (v < n ? v + 1 : v);
  c.arglen = v < n ? n - v - 1 : 0;
  if (!n) { local(e, R_EMPTY); return; }
  for (i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (wordis(line, v, commands[i].verb)) { commands[i].run(e, &c); return; }
  local(e, R_UNKNOWN);
}

static void badline(struct smtp *e, enum reply r)
{
  local(e, r);
  if (++e->errors >= SMTP_MAXERRORS) local(e, R_ERRORS);
}

static int wellformed(const char *line, size_t len)
{
  size_t i;
  if (len < 2 || line[len - 2] != '\r') return 0;
  for (i = 0; i + 2 < len; i++)
    if (line[i] == '\r' || line[i] == '\0') return 0;
  return 1;
}

static int parsing(const struct smtp *e)
{
  return (e->phase == SMTP_P_PLAIN || e->phase == SMTP_P_GATE)
    && e->errors < SMTP_MAXERRORS;
}

static int parse_client(struct smtp *e)
{
  size_t off = 0;
  while (parsing(e) && e->qlen < SMTP_QMAX - 1 && off < e->cinlen) {
    const char *s = e->cin + off;
    size_t left = e->cinlen - off;
    const char *lf = memchr(s, '\n', left);
    size_t len;
    if (e->skipping) {
      if (!lf) { off = e->cinlen; break; }
      off += (size_t)(lf - s) + 1;
      e->skipping = 0;
      badline(e, R_TOOLONG);
      continue;
    }
    if (!lf) {
      if (left >= SMTP_CMDMAX) { e->skipping = 1; off = e->cinlen; }
      else if (e->cin_eof) off = e->cinlen; /* a partial line at EOF is no command */
      break;
    }
    len = (size_t)(lf - s) + 1;
    if (len > SMTP_CMDMAX) badline(e, R_TOOLONG);
    else if (!wellformed(s, len)) badline(e, R_BADLINE);
    else if (SMTP_SOUTSIZE - e->soutlen < len + 6) break;
    else command(e, s, len, off + len == e->cinlen);
    off += len;
    if (e->tainted) { off = e->cinlen; e->tainted = 0; }
  }
  if (!off) return 0;
  memmove(e->cin, e->cin + off, e->cinlen - off);
  e->cinlen -= off;
  return 1;
}

/* --- replies from the smtpd --- */

static void finalize_held(struct smtp *e, int last)
{
  size_t sep = e->held + 3;
  if (!e->hasheld) return;
  e->hasheld = 0;
  if (e->heldbare && last) {
    memmove(e->cout + sep, e->cout + sep + 1, e->coutlen - sep - 1);
    e->coutlen--;
  } else e->cout[sep] = last ? ' ' : '-';
}

/* One line of a 2xx EHLO reply: the domain line stays first, AUTH goes
 * before TLS unless allowed, STARTTLS goes after TLS. The line kept last is
 * held back uncommitted until we know whether another follows it. */
static void rewrite_line(struct smtp *e, const char *line, size_t len, int first)
{
  size_t n = len - 1;
  const char *text;
  int bare = line[3] == '\r' || line[3] == '\n';
  if (n && line[n - 1] == '\r') n--;
  text = line + 4;
  n = bare ? 0 : n - 4;
  if (!first) {
    size_t k;
    for (k = 0; k < n && text[k] != ' ' && text[k] != '='; k++) ;
    if (wordis(text, k, "starttls")) {
      if (e->tls) return;
      e->sawstarttls = 1;
    } else if (wordis(text, k, "auth") && !e->tls && !plainauth(e)) return;
  }
  finalize_held(e, 0);
  e->held = e->coutcommit = e->coutlen; /* what came before is final now */
  e->hasheld = 1;
  e->heldbare = bare;
  memcpy(e->cout + e->coutlen, line, 3);
  e->cout[e->coutlen + 3] = '-';
  memcpy(e->cout + e->coutlen + 4, text, n);
  memcpy(e->cout + e->coutlen + 4 + n, "\r\n", 2);
  e->coutlen += n + 6;
}

static void starttls_answered(struct smtp *e, int ok)
{
  e->phase = SMTP_P_PLAIN;
  if (e->tainted) emitreply(e, R_PIPELINED);
  else if (!ok || e->cin_eof) emitreply(e, R_TLSUNAVAIL);
  else {
    emitreply(e, R_TLSREADY);
    e->phase = SMTP_P_HANDSHAKE;
  }
  e->tainted = 0;
}

static void end_reply(struct smtp *e)
{
  int kind = e->rkind;
  e->inreply = 0;
  if (e->rewrite) {
    if (!e->tls && !e->sawstarttls) {
      char line[3 + sizeof " STARTTLS\r\n"];
      finalize_held(e, 0);
      memcpy(line, e->rcode, 3);
      memcpy(line + 3, " STARTTLS\r\n", sizeof line - 3);
      memcpy(e->cout + e->coutlen, line, sizeof line - 1);
      e->coutlen += sizeof line - 1;
    } else finalize_held(e, 1);
    e->coutcommit = e->coutlen;
  }
  if (kind < 0) return;
  qpop(e);
  if (kind == Q_STARTTLS) starttls_answered(e, e->rcode[0] == '2');
}

static int isdigit_(int c) { return c >= '0' && c <= '9'; }

/* Returns 0 if the line is no SMTP reply line. */
static int reply_line(struct smtp *e, const char *line, size_t len)
{
  int last;
  if (len < 4 || line[0] < '2' || line[0] > '5' || !isdigit_(line[1])
      || !isdigit_(line[2]))
    return 0;
  switch (line[3]) {
  case '-': case ' ': case '\n': break;
  case '\r': if (len == 5) break; return 0;
  default: return 0;
  }
  last = line[3] != '-';
  if (!e->inreply) {
    e->inreply = 1;
    e->rkind = e->qlen ? (int)qkind(e, 0) : -1;
    memcpy(e->rcode, line, 3);
    e->rewrite = e->rkind == Q_EHLO && line[0] == '2';
    e->sawstarttls = 0;
    if (e->rewrite) rewrite_line(e, line, len, 1);
    else if (e->rkind != Q_STARTTLS) emit(e, line, len);
  } else if (e->rewrite) rewrite_line(e, line, len, 0);
  else if (e->rkind != Q_STARTTLS) emit(e, line, len);
  if (last) end_reply(e);
  return 1;
}

static int serving(const struct smtp *e)
{
  return e->phase == SMTP_P_PLAIN || e->phase == SMTP_P_TLSWAIT
    || e->phase == SMTP_P_GATE || e->phase == SMTP_P_DRAIN;
}

static int parse_server(struct smtp *e)
{
  size_t off = 0;
  while (serving(e) && off < e->sinlen) {
    const char *s = e->sin + off;
    size_t left = e->sinlen - off;
    const char *lf = memchr(s, '\n', left);
    size_t len;
    if (e->phase == SMTP_P_DRAIN && !e->qspecial) break;
    if (!e->inreply && e->qlen && qkind(e, 0) >= Q_LOCAL) break;
    if (!lf) {
      if (left == SMTP_SINSIZE) {
        emitreply(e, R_BROKEN);
        closeup(e, SMTP_WHY_SERVERLONG, 1);
      }
      break;
    }
    len = (size_t)(lf - s) + 1;
    if (SMTP_COUTSIZE - e->coutlen < len + 32) break;
    if (!reply_line(e, s, len)) {
      e->coutlen = e->coutcommit;
      e->hasheld = 0;
      emitreply(e, R_BROKEN);
      closeup(e, SMTP_WHY_SERVERBROKEN, 1);
      break;
    }
    off += len;
  }
  if (!off) return 0;
  memmove(e->sin, e->sin + off, e->sinlen - off);
  e->sinlen -= off;
  return 1;
}

/* Local replies go out when every reply owed before them has. */
static int pump(struct smtp *e)
{
  int moved = 0;
  while (!e->inreply && e->qlen && qkind(e, 0) >= Q_LOCAL && e->phase != SMTP_P_CLOSE) {
    enum reply r = (enum reply)(qkind(e, 0) - Q_LOCAL);
    if (!emitreply(e, r)) break;
    qpop(e);
    moved = 1;
    if (r == R_ERRORS) closeup(e, SMTP_WHY_ERRORS, 1);
  }
  return moved;
}

/* In the drain, client bytes are no longer commands: they go raw. */
static int move_raw(struct smtp *e)
{
  size_t n = SMTP_SOUTSIZE - e->soutlen;
  if (e->phase != SMTP_P_DRAIN || !e->cinlen || !n) return 0;
  if (n > e->cinlen) n = e->cinlen;
  memcpy(e->sout + e->soutlen, e->cin, n);
  e->soutlen += n;
  memmove(e->cin, e->cin + n, e->cinlen - n);
  e->cinlen -= n;
  return 1;
}

static int server_gone(struct smtp *e)
{
  if (!e->sin_eof || !serving(e) || memchr(e->sin, '\n', e->sinlen)) return 0;
  if (e->phase == SMTP_P_DRAIN && !e->qspecial) return 0;
  if (e->hasheld) { finalize_held(e, 1); e->coutcommit = e->coutlen; }
  e->inreply = 0;
  e->exitcode = e->qlen ? 1 : 0;
  while (e->qlen) {
    emitreply(e, R_GONE);
    qpop(e);
  }
  closeup(e, SMTP_WHY_SERVEREOF, e->exitcode);
  return 1;
}

static void advance(struct smtp *e)
{
  int moved;
  do {
    moved = parse_server(e);
    moved |= pump(e);
    moved |= parse_client(e);
    moved |= pump(e);
    moved |= move_raw(e);
    moved |= server_gone(e);
    if (e->phase == SMTP_P_DRAIN && !e->qspecial) {
      e->phase = SMTP_P_RELAY;
      moved = 0;
    }
  } while (moved);
}

size_t smtp_client_room(struct smtp *e, char **p)
{
  if (e->cin_eof) return 0;
  *p = e->cin + e->cinlen;
  switch (e->phase) {
  case SMTP_P_PLAIN: case SMTP_P_GATE:
    if (!parsing(e)) return 0;
    /* fall through */
  case SMTP_P_DRAIN: case SMTP_P_TLSWAIT:
    return SMTP_CINSIZE - e->cinlen;
  default:
    return 0;
  }
}

void smtp_client_input(struct smtp *e, size_t n)
{
  if (e->phase == SMTP_P_TLSWAIT) {
    e->tainted = 1; /* discarded: nothing may follow STARTTLS */
    return;
  }
  e->cinlen += n;
  advance(e);
}

void smtp_client_eof(struct smtp *e)
{
  e->cin_eof = 1;
  advance(e);
}

size_t smtp_server_room(struct smtp *e, char **p)
{
  if (e->sin_eof || !serving(e)) return 0;
  *p = e->sin + e->sinlen;
  return SMTP_SINSIZE - e->sinlen;
}

void smtp_server_input(struct smtp *e, size_t n)
{
  e->sinlen += n;
  advance(e);
}

void smtp_server_eof(struct smtp *e)
{
  e->sin_eof = 1;
  advance(e);
}

size_t smtp_client_output(struct smtp *e, const char **p)
{
  *p = e->cout;
  return e->coutcommit;
}

void smtp_client_sent(struct smtp *e, size_t n)
{
  memmove(e->cout, e->cout + n, e->coutlen - n);
  e->coutlen -= n;
  e->coutcommit -= n;
  if (e->hasheld) e->held -= n;
  advance(e);
}

size_t smtp_server_output(struct smtp *e, const char **p)
{
  *p = e->sout;
  return e->phase == SMTP_P_CLOSE ? 0 : e->soutlen;
}

void smtp_server_sent(struct smtp *e, size_t n)
{
  memmove(e->sout, e->sout + n, e->soutlen - n);
  e->soutlen -= n;
  advance(e);
}

int smtp_server_done(const struct smtp *e)
{
  if (e->phase == SMTP_P_CLOSE) return 1;
  /* in the drain the relay passes the client's EOF on, after the leftovers */
  return e->cin_eof && !e->soutlen && !e->cinlen
    && (e->phase == SMTP_P_PLAIN || e->phase == SMTP_P_GATE);
}

enum smtp_status smtp_status(const struct smtp *e)
{
  switch (e->phase) {
  case SMTP_P_HANDSHAKE: return SMTP_STARTTLS;
  case SMTP_P_RELAY: return SMTP_RELAY;
  case SMTP_P_CLOSE: return SMTP_CLOSE;
  default: return SMTP_RUN;
  }
}

int smtp_exitcode(const struct smtp *e) { return e->exitcode; }
enum smtp_why smtp_why(const struct smtp *e) { return e->why; }

void smtp_tls_started(struct smtp *e)
{
  e->tls = 1;
  e->phase = SMTP_P_GATE;
  e->cinlen = 0;
  e->skipping = 0;
  e->errors = 0;
  advance(e);
}

void smtp_timeout(struct smtp *e)
{
  e->coutlen = e->coutcommit;
  e->hasheld = 0;
  emitreply(e, R_TIMEOUT);
  closeup(e, SMTP_WHY_TIMEOUT, 99);
}

void smtp_leftover(const struct smtp *e, struct smtp_leftover *l)
{
  l->toclient[0] = e->cout; l->toclientlen[0] = e->coutcommit;
  l->toclient[1] = e->sin; l->toclientlen[1] = e->sinlen;
  l->toserver[0] = e->sout; l->toserverlen[0] = e->soutlen;
  l->toserver[1] = e->cin; l->toserverlen[1] = e->cinlen;
}
