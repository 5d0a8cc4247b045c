/* smtp.c: the SMTP engine. It frames the client's command lines and message
 * content and the smtpd's replies, decides what to forward, what to answer
 * itself and when the session leaves the proxy's hands, and keeps every
 * reply in command order (RFC 2920), one per command. No I/O happens here. */
#include <stddef.h>
#include <string.h>
#include "smtp.h"

/* What a queue entry owes the client. Q_END: the reply to the end of
 * message content (DATA's final dot, BDAT LAST). Values from Q_LOCAL on
 * are local replies, indexed into replies[]. */
enum { Q_FWD, Q_EHLO, Q_STARTTLS, Q_DATA, Q_GREET, Q_AUTH, Q_END, Q_LOCAL };

enum reply {
  R_TLSFIRST, R_BADSEQ, R_UNKNOWN, R_STARTTLSARGS, R_PIPELINED, R_AFTERSTARTTLS,
  R_DECLINED, R_BDATARGS, R_TLSREADY, R_TLSUNAVAIL, R_TOOLONG, R_BADLINE, R_EMPTY,
  R_EHLOFIRST, R_ERRORS, R_GONE, R_BROKEN, R_TIMEOUT, R_TLSACTIVE, R_BARELF, R_BARECR,
  R_NUL, R_REFUSED, R_BDATCLOSE, R_CHUNKBIG, R_HTTP, R_TRUSTED, R_REQUIRETLS, R_NOTOFFERED
};

static const char *const replies[] = {
  "530 5.7.0 Must issue a STARTTLS command first\r\n",
  "503 5.5.1 Bad sequence of commands: MAIL first\r\n",
  "500 5.5.1 Command unrecognized\r\n",
  "501 5.5.4 STARTTLS takes no parameters\r\n",
  "503 5.5.1 STARTTLS must end a pipelined group: the commands sent after it are refused\r\n",
  "503 5.5.1 Command sent after STARTTLS in the same group: refused\r\n",
  "503 5.5.1 STARTTLS is not available after HELO, MAIL or AUTH\r\n",
  "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n",
  "220 2.0.0 Ready to start TLS\r\n",
  "454 4.7.0 TLS not available due to temporary reason\r\n",
  "500 5.5.2 Line too long\r\n",
  "500 5.5.2 Syntax error: NUL, bare CR or bare LF in command line\r\n",
  "500 5.5.2 Syntax error: empty command\r\n",
  "503 5.5.1 Send EHLO first\r\n",
  "421 4.7.0 Too many errors, closing connection\r\n",
  "421 4.3.0 Mail server unavailable, closing connection\r\n",
  "421 4.3.0 Mail server error, closing connection\r\n",
  "421 4.4.2 Timeout, closing connection\r\n",
  "503 5.5.1 TLS is already active\r\n",
  "550 5.5.2 Message refused: LF without CR in its content (RFC 5321 2.3.8)\r\n",
  "550 5.5.2 Message refused: CR without LF in its content (RFC 5321 2.3.8)\r\n",
  "550 5.5.2 Message refused: NUL at the start of a line of its content\r\n",
  "421 4.5.2 Closing connection after a refused message\r\n",
  "421 4.5.4 Cannot tell where that BDAT chunk ends, closing connection\r\n",
  "552 5.3.4 BDAT chunk over 2147483647 octets: refused\r\n",
  "421 4.7.0 HTTP request refused, closing connection\r\n",
  "550 5.7.0 XCLIENT and XFORWARD are only for a trusted proxy\r\n",
  "530 5.7.10 REQUIRETLS needs TLS: issue STARTTLS first\r\n",
  "502 5.5.1 STARTTLS not offered to this client\r\n"
};

static unsigned qkind(const struct smtp *e, unsigned i)
{
  return e->q[(e->qhead + i) % SMTP_QMAX];
}

static void qset(struct smtp *e, unsigned i, unsigned kind)
{
  e->q[(e->qhead + i) % SMTP_QMAX] = (unsigned char)kind;
}

static void qpush(struct smtp *e, unsigned kind)
{
  qset(e, e->qlen, kind);
  e->qlen++;
  if (kind != Q_FWD) e->qspecial++;
}

static void qpop(struct smtp *e)
{
  if (qkind(e, 0) != Q_FWD) e->qspecial--;
  e->qhead = (e->qhead + 1) % SMTP_QMAX;
  e->qlen--;
}

/* Replies are committed (given to the caller) only once their last line is
 * in: a reply cut short by the smtpd's end never reaches the client half
 * done. Local replies are whole, so they commit at once, but leave
 * SMTP_RESERVE free for the 421 that may end the session. */
static void append(struct smtp *e, const char *s, size_t n)
{
  memcpy(e->cout + e->coutlen, s, n);
  e->coutlen += n;
}

static int emitreply(struct smtp *e, enum reply r)
{
  size_t n = strlen(replies[r]);
  if (SMTP_COUTSIZE - e->coutlen < n + SMTP_RESERVE) return 0;
  append(e, replies[r], n);
  e->coutcommit = e->coutlen;
  return 1;
}

/* Ends the proxy's part: only what is committed still goes to the client,
 * then the final reply r if given, in the reserve. */
static void closeup(struct smtp *e, enum smtp_why why, int code, int r)
{
  e->coutlen = e->coutcommit;
  e->hasheld = 0;
  e->inreply = 0;
  e->phase = SMTP_P_CLOSE;
  e->why = why;
  e->exitcode = code;
  if (r >= 0 && SMTP_COUTSIZE - e->coutlen >= strlen(replies[r])) {
    append(e, replies[r], strlen(replies[r]));
    e->coutcommit = e->coutlen;
  }
}

static void forward(struct smtp *e, const char *s, size_t n, unsigned kind)
{
  memcpy(e->sout + e->soutlen, s, n);
  e->soutlen += n;
  qpush(e, kind);
}

void smtp_init(struct smtp *e, unsigned flags)
{
  /* the buffers, last in the struct, need no zeroing: their lengths say
   * what they hold; not touching them spares a page fault per 4 KiB */
  memset(e, 0, offsetof(struct smtp, cin));
  e->flags = flags;
  e->phase = SMTP_P_PLAIN;
  e->rkind = -1;
  qpush(e, Q_FWD); /* the greeting */
  /* declined from the start; the engine stays even with -a, so that
   * STARTTLS is refused by us rather than passed to the smtpd, until an
   * AUTH that -a lets through hands the session to the relay */
  if (flags & SMTP_NOTLS) {
    e->declined = 1;
    e->phase = SMTP_P_COMMANDS;
  }
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

/* --- client commands --- */

struct cmd {
  const char *line;   /* the whole line, CRLF included */
  size_t len;
  const char *arg;    /* after the verb's SP; may be empty */
  size_t arglen;
  int last;           /* no byte follows this line in what the client sent */
  int lastchunk;      /* a BDAT LAST */
};

static int gated(const struct smtp *e) { return e->phase == SMTP_P_GATE; }
static int incommands(const struct smtp *e) { return e->phase == SMTP_P_COMMANDS; }
static int requiretls(const struct smtp *e) { return (e->flags & SMTP_REQUIRETLS) != 0; }
static int plainauth(const struct smtp *e)
{
  return (e->flags & SMTP_PLAINAUTH) && !(e->flags & SMTP_REQUIRETLS);
}
static int guard(const struct smtp *e) { return (e->flags & SMTP_GUARD) != 0; }
/* before TLS, a command that -r forbids */
static int forbidden(const struct smtp *e) { return e->phase == SMTP_P_PLAIN && requiretls(e); }

static void local(struct smtp *e, enum reply r) { qpush(e, Q_LOCAL + r); }

/* The session leaves the proxy: from here on client bytes go to the smtpd
 * raw, and once the replies the engine must still edit or order are out,
 * the relay takes over. Under -L the engine stays, to guard content: the
 * session goes on as a declined one does, with AUTH allowed over TLS or
 * with -a. */
static void decide(struct smtp *e) { e->phase = guard(e) ? SMTP_P_COMMANDS : SMTP_P_HANDOVER; }

/* HELO, MAIL or AUTH before STARTTLS: no TLS in this session. The engine
 * stays to keep AUTH away and content apart, unless -a let AUTH through. */
static void decline(struct smtp *e)
{
  e->declined = 1;
  if (plainauth(e)) decide(e);
  else e->phase = SMTP_P_COMMANDS;
}

static void c_ehlo(struct smtp *e, const struct cmd *c)
{
  forward(e, c->line, c->len, Q_EHLO);
  if (gated(e)) decide(e);
}

static void c_helo(struct smtp *e, const struct cmd *c)
{
  forward(e, c->line, c->len, Q_FWD);
  e->keyslen = 0;
  e->keysfull = 0;
  e->chunking = 0; /* no extensions in a HELO session */
  if (gated(e)) decide(e);
  else if (e->phase == SMTP_P_PLAIN && !requiretls(e)) decline(e);
}

/* RFC 8689 REQUIRETLS among MAIL's parameters: any word of the line after
 * the verb that is the keyword, bare or with a value (a quoted local part
 * that holds it is refused too, which costs nothing). */
static int asks_requiretls(const struct cmd *c)
{
  size_t i, k;
  for (i = 0; i < c->arglen; i = k + 1) {
    for (k = i; k < c->arglen && c->arg[k] != ' '; k++) ;
    if (k - i >= 10 && wordis(c->arg + i, 10, "requiretls") && (k - i == 10 || c->arg[i + 10] == '='))
      return 1;
  }
  return 0;
}

static void c_mail(struct smtp *e, const struct cmd *c)
{
  if (gated(e)) local(e, R_EHLOFIRST);
  else if (forbidden(e)) local(e, R_TLSFIRST);
  /* a stdio smtpd cannot know the hop is in clear, and would take it on */
  else if (!e->tls && asks_requiretls(c)) local(e, R_REQUIRETLS);
  else {
    forward(e, c->line, c->len, Q_FWD);
    if (e->phase == SMTP_P_PLAIN) decline(e);
  }
}

/* Under -L the engine stays through the exchange: client bytes wait for
 * each reply, and after a 334 the next line is the client's response. */
static void c_auth(struct smtp *e, const struct cmd *c)
{
  if (gated(e)) local(e, R_EHLOFIRST);
  else if (!e->tls && !plainauth(e)) local(e, R_TLSFIRST);
  else if (!guard(e)) { forward(e, c->line, c->len, Q_FWD); decline(e); }
  else {
    forward(e, c->line, c->len, Q_AUTH);
    e->datawait = 1;
    if (e->phase == SMTP_P_PLAIN) decline(e);
  }
}

static void c_starttls(struct smtp *e, const struct cmd *c)
{
  size_t i;
  if (gated(e)) { local(e, R_EHLOFIRST); return; }
  if (incommands(e)) {
    local(e, e->tls ? R_TLSACTIVE : e->flags & SMTP_NOTLS ? R_NOTOFFERED : R_DECLINED);
    return;
  }
  for (i = 0; i < c->arglen; i++)
    if (c->arg[i] != ' ') { local(e, R_STARTTLSARGS); return; }
  if (!c->last) {
    /* CVE-2011-0411: plaintext pipelined after STARTTLS must never run;
     * parse_client refuses each command after this one */
    local(e, R_PIPELINED);
    e->poison = e->cinlen;
    return;
  }
  /* a new smtpd follows TLS: this one has nothing to forget */
  if (e->flags & SMTP_FRESH) local(e, R_TLSREADY);
  else forward(e, "RSET\r\n", 6, Q_STARTTLS);
  e->phase = SMTP_P_TLSWAIT;
}

static void c_pass(struct smtp *e, const struct cmd *c)
{
  forward(e, c->line, c->len, Q_FWD);
}

static void c_quit(struct smtp *e, const struct cmd *c)
{
  forward(e, c->line, c->len, Q_FWD);
  e->quit = 1;
}

/* VRFY, EXPN: like NOOP, RSET and HELP, they need no EHLO (RFC 5321
 * 4.1.4), so the gate after TLS lets them through too */
static void c_query(struct smtp *e, const struct cmd *c)
{
  if (forbidden(e)) local(e, R_TLSFIRST);
  else forward(e, c->line, c->len, Q_FWD);
}

/* XCLIENT, XFORWARD: they let a trusted proxy tell the smtpd who the
 * client is; through us the client would name itself */
static void c_trusted(struct smtp *e, const struct cmd *c)
{
  (void)c;
  local(e, R_TRUSTED);
}

/* RCPT, DATA, BDAT: only once MAIL has declined TLS */
static int transaction(struct smtp *e)
{
  if (gated(e)) local(e, R_EHLOFIRST);
  else if (forbidden(e)) local(e, R_TLSFIRST);
  else if (!incommands(e)) local(e, R_BADSEQ);
  else return 1;
  return 0;
}

static void c_rcpt(struct smtp *e, const struct cmd *c)
{
  if (transaction(e)) forward(e, c->line, c->len, Q_FWD);
}

static void c_data(struct smtp *e, const struct cmd *c)
{
  if (!transaction(e)) return;
  forward(e, c->line, c->len, Q_DATA);
  e->datawait = 1;
}

/* The chunk itself is framed by command(), whoever answers. */
static void c_bdat(struct smtp *e, const struct cmd *c)
{
  if (!transaction(e)) return;
  if (e->chunking) forward(e, c->line, c->len, c->lastchunk ? Q_END : Q_FWD);
  else local(e, R_UNKNOWN); /* an smtpd that never offered it would run the chunk */
}

/* a verb the smtpd offered in its last EHLO reply (ETRN, XCLIENT, ...) */
static void c_extension(struct smtp *e, const struct cmd *c)
{
  if (gated(e)) local(e, R_EHLOFIRST);
  else if (forbidden(e)) local(e, R_TLSFIRST);
  else forward(e, c->line, c->len, Q_FWD);
}

static const struct {
  const char *verb;
  void (*run)(struct smtp *, const struct cmd *);
} commands[] = {
  { "ehlo", c_ehlo }, { "helo", c_helo }, { "mail", c_mail },
  { "auth", c_auth }, { "starttls", c_starttls }, { "rset", c_pass },
  { "noop", c_pass }, { "help", c_pass }, { "quit", c_quit },
  { "vrfy", c_query }, { "expn", c_query }, { "rcpt", c_rcpt },
  { "data", c_data }, { "bdat", c_bdat }, { "xclient", c_trusted },
  { "xforward", c_trusted }
};

static int known(const char *s, size_t n)
{
  size_t i;
  for (i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (wordis(s, n, commands[i].verb)) return (int)i;
  return -1;
}

/* RFC 5321 4.1.1.1: an EHLO keyword is letters, digits and '-' */
static int keychar(int c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

static int offered(const struct smtp *e, const char *s, size_t n)
{
  size_t i;
  if (e->keysfull) {
    for (i = 0; i < n; i++)
      if (!keychar((unsigned char)s[i])) return 0;
    return n > 0;
  }
  for (i = 0; i < e->keyslen; i += strlen(e->keys + i) + 1)
    if (wordis(s, n, e->keys + i)) return 1;
  return 0;
}

/* A line that an smtpd could take for a BDAT: the verb, then no keyword
 * character (a TAB, say, where SP belongs). */
static int bdatlike(const char *line, size_t n)
{
  return n >= 4 && wordis(line, 4, "bdat") && (n == 4 || !keychar((unsigned char)line[4]));
}

/* RFC 3030: "BDAT" SP chunk-size [SP end-marker], chunk-size 1*DIGIT,
 * end-marker "LAST"; s holds what follows the verb. 0 if it is not that.
 * A size past what 64 bits hold is kept as the largest they do. */
static int chunksize(const char *s, size_t n, unsigned long long *size, int *last)
{
  size_t i = 1;
  unsigned long long v = 0;
  if (n < 2 || s[0] != ' ') return 0;
  for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
    v = v > (~0ULL - 9) / 10 ? ~0ULL : v * 10 + (unsigned)(s[i] - '0');
  if (i == 1) return 0;
  *last = i < n;
  if (*last && !(n - i == 5 && s[i] == ' ' && wordis(s + i + 1, 4, "last"))) return 0;
  *size = v;
  return 1;
}

/* RFC 7231 4 (and CONNECT, PATCH): a browser made to talk to port 25
 * (the cross-protocol form attack) sends one of these first */
static int http(const char *s, size_t n)
{
  static const char *const methods[] = {
    "get", "post", "put", "head", "connect", "options", "delete", "patch", "trace"
  };
  size_t i;
  for (i = 0; i < sizeof methods / sizeof methods[0]; i++) {
    size_t k = strlen(methods[i]);
    if (n > k && s[k] == ' ' && wordis(s, k, methods[i])) return 1;
  }
  return 0;
}

static int lastlocal(const struct smtp *e)
{
  return qkind(e, e->qlen - 1) >= Q_LOCAL;
}

static void badline(struct smtp *e, enum reply r)
{
  local(e, r);
  if (++e->errors >= SMTP_MAXERRORS) local(e, R_ERRORS);
}

static void command(struct smtp *e, const char *line, size_t len, int last, int poisoned)
{
  struct cmd c;
  size_t n = len - 2, v;
  unsigned long long chunk = 0;
  int k;
  c.line = line;
  c.len = len;
  c.last = last;
  c.lastchunk = 0;
  for (v = 0; v < n && line[v] != ' '; v++) ;
  c.arg = line + (v < n ? v + 1 : v);
  c.arglen = v < n ? n - v - 1 : 0;
  k = known(line, v);
  if (!n) local(e, poisoned ? R_AFTERSTARTTLS : R_EMPTY);
  else if (bdatlike(line, n)) {
    if (!chunksize(line + 4, n - 4, &chunk, &c.lastchunk)) {
      /* where its chunk ends, if it has one, is anybody's guess: an smtpd
       * may frame one where we would read commands, or the reverse. The
       * client is read no more; pump() closes once this reply is out. */
      local(e, R_BDATARGS);
      e->unframed = 1;
      return;
    }
    if (poisoned) local(e, R_AFTERSTARTTLS);
    else if (chunk > SMTP_CHUNKMAX) local(e, R_CHUNKBIG);
    else c_bdat(e, &c);
  }
  else if (poisoned) local(e, R_AFTERSTARTTLS);
  else if (k >= 0) commands[k].run(e, &c);
  else if (offered(e, line, v)) c_extension(e, &c);
  else badline(e, R_UNKNOWN);
  if (chunk) {
    /* RFC 3030 2: the chunk follows, whether or not the BDAT is refused */
    e->content = lastlocal(e) ? SMTP_C_SKIP : SMTP_C_BDAT;
    e->chunk = chunk;
  }
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
  return (e->phase == SMTP_P_PLAIN || e->phase == SMTP_P_GATE || e->phase == SMTP_P_COMMANDS)
    && e->errors < SMTP_MAXERRORS && !e->refused && !e->unframed;
}

/* --- message content --- */

/* Where the DATA scanner is: inside a line (after a CR or not), at a line's
 * start, after a line-starting dot, after that dot's CR. */
enum { D_MID, D_CR, D_BOL, D_DOT, D_DOTCR };

static void content_ends(struct smtp *e)
{
  e->content = SMTP_C_NONE;
  qpush(e, Q_END); /* the reply to the final dot */
}

/* -L: the message is refused at s[at], the first byte that makes its
 * content one that an smtpd could end otherwise than at CRLF.CRLF, or end
 * where we do not; st is the scanner's state before that byte. Nothing more
 * reaches the smtpd, whose input ends without the final dot, so that it
 * discards the message; the client gets r, then the session closes.
 * Returns at: the bytes before it count as content (never sent now). */
static size_t refuse(struct smtp *e, enum reply r, int st, const char *s, size_t n, size_t at)
{
  static const char *const before[] = { "", "<CR>", "<CR><LF>", "<CR><LF>.", "<CR><LF>.<CR>" };
  size_t i, len = strlen(before[st]);
  memcpy(e->badseq, before[st], len + 1);
  for (i = at; i < n && i < at + 4; i++) {
    const char *w = s[i] == '\r' ? "<CR>" : s[i] == '\n' ? "<LF>" : s[i] == '.' ? "."
      : s[i] == '\0' ? "<NUL>" : 0;
    if (!w) break;
    memcpy(e->badseq + len, w, strlen(w) + 1);
    len += strlen(w);
  }
  e->refused = 1;
  e->content = SMTP_C_NONE;
  local(e, r);
  return at;
}

/* scan_data() under -L: CR and LF only ever as CRLF, no NUL at a line's
 * start or after its first dot (an smtpd that drops NULs would see a dot
 * line there), and only CRLF.CRLF ends the content. Lines are found with
 * memchr for their LF and a second one for a CR before it. A CR that ends
 * s is not counted: the caller keeps it for the next scan, which sees what
 * follows it. */
static size_t scan_guarded(struct smtp *e, const char *s, size_t n)
{
  size_t i = 0;
  int st = e->dstate;
  while (i < n) {
    char c;
    if (st == D_MID) {
      const char *lf = memchr(s + i, '\n', n - i);
      size_t end = lf ? (size_t)(lf - s) : n;
      const char *cr = memchr(s + i, '\r', end - i);
      size_t at = cr ? (size_t)(cr - s) + 1 : 0;
      if (cr && at < end) return refuse(e, R_BARECR, D_CR, s, n, at);
      if (!lf) { i = cr ? n - 1 : n; break; } /* a last CR waits: see below */
      if (!cr) return refuse(e, R_BARELF, D_MID, s, n, end);
      i = end + 1;
      st = D_BOL;
      continue;
    }
    c = s[i];
    if (st == D_CR || st == D_DOTCR) {
      if (c != '\n') return refuse(e, R_BARECR, st, s, n, i);
      i++;
      if (st == D_DOTCR) { e->dstate = D_BOL; content_ends(e); return i; }
      st = D_BOL;
      continue;
    }
    /* D_BOL or D_DOT */
    if (c == '\n') return refuse(e, R_BARELF, st, s, n, i);
    if (c == '\0') return refuse(e, R_NUL, st, s, n, i);
    /* A CR that ends what we have is held (left uncounted, its state not
     * taken) until the next byte shows it is no bare CR: once written, the
     * smtpd may have taken it for a line's end. */
    if (c == '\r' && i + 1 == n) break;
    i++;
    st = c == '\r' ? (st == D_DOT ? D_DOTCR : D_CR) : c == '.' && st == D_BOL ? D_DOT : D_MID;
  }
  e->dstate = st;
  return i;
}

/* How many of the n bytes at s are content, up to and including the
 * CRLF.CRLF that ends it. Whole lines are skipped with memchr: the cost per
 * byte is memchr's. */
static size_t scan_data(struct smtp *e, const char *s, size_t n)
{
  size_t i = 0;
  int st = e->dstate;
  if (guard(e)) return scan_guarded(e, s, n);
  while (i < n) {
    if (st == D_MID) {
      const char *cr = memchr(s + i, '\r', n - i);
      if (!cr) { i = n; break; }
      i = (size_t)(cr - s) + 1;
      st = D_CR;
      continue;
    }
    switch (s[i++]) {
    case '\r': st = st == D_DOT ? D_DOTCR : D_CR; break;
    case '\n':
      if (st == D_DOTCR) { e->dstate = D_BOL; content_ends(e); return i; }
      st = st == D_CR ? D_BOL : D_MID;
      break;
    case '.': st = st == D_BOL ? D_DOT : D_MID; break;
    default: st = D_MID;
    }
  }
  e->dstate = st;
  return i;
}

static size_t take_chunk(struct smtp *e, size_t n)
{
  if (n >= e->chunk) {
    n = (size_t)e->chunk;
    e->chunk = 0;
    e->content = SMTP_C_NONE; /* BDAT's own reply was queued with the command */
  } else e->chunk -= n;
  return n;
}

/* Content that is in sout already: how much of it counts, per the mode. */
static size_t frame(struct smtp *e, const char *s, size_t n)
{
  return e->content == SMTP_C_DATA ? scan_data(e, s, n) : take_chunk(e, n);
}

/* Content from cin: moved to sout, or dropped for a refused chunk. */
static size_t content(struct smtp *e, const char *s, size_t n)
{
  size_t room = SMTP_SOUTSIZE - e->soutlen;
  if (e->content == SMTP_C_SKIP) return take_chunk(e, n);
  if (n > room) n = room;
  n = frame(e, s, n);
  memcpy(e->sout + e->soutlen, s, n);
  e->soutlen += n;
  return n;
}

static int parse_client(struct smtp *e)
{
  size_t off = 0;
  while (parsing(e) && off < e->cinlen) {
    const char *s = e->cin + off;
    size_t left = e->cinlen - off, len, limit;
    const char *lf;
    int poisoned = off < e->poison;
    if (e->content) {
      size_t k = content(e, s, left);
      /* the client ended after a CR held in content: it never goes */
      if (!k && e->cin_eof && left == 1 && *s == '\r' && e->content == SMTP_C_DATA) k = 1;
      if (!k) break;
      off += k;
      continue;
    }
    /* a new smtpd's commands wait for its greeting, as a client's would */
    if (e->datawait || e->qlen >= SMTP_QMAX - 1 || (e->qlen && qkind(e, 0) == Q_GREET)) break;
    lf = memchr(s, '\n', left);
    limit = e->authresp || (left >= 5 && wordis(s, 5, "auth ")) ? SMTP_AUTHMAX : SMTP_CMDMAX;
    if (e->skipping) {
      if (!lf) { off = e->cinlen; break; }
      off += (size_t)(lf - s) + 1;
      if (e->skipping == 1) badline(e, R_TOOLONG);
      e->skipping = 0;
      continue;
    }
    if (e->authresp) {
      /* the AUTH exchange's own reply answers it; one that is too long or
       * malformed is sent as "*", which cancels the exchange (RFC 4954 4) */
      int ok;
      if (!lf && left < limit && !e->cin_eof) break;
      len = lf ? (size_t)(lf - s) + 1 : left;
      ok = lf && len <= limit && wellformed(s, len);
      if (SMTP_SOUTSIZE - e->soutlen < (ok ? len : 3)) break;
      memcpy(e->sout + e->soutlen, ok ? s : "*\r\n", ok ? len : 3);
      e->soutlen += ok ? len : 3;
      if (!lf && !e->cin_eof) e->skipping = 2; /* its rest is dropped without a word */
      e->authresp = 0;
      e->datawait = 1;
      off += len;
      continue;
    }
    if (http(s, left)) {
      /* ended at once, before its line ends: what follows is no SMTP */
      closeup(e, SMTP_WHY_HTTP, 1, R_HTTP);
      break;
    }
    if (!lf) {
      if (poisoned) e->poison = e->cinlen; /* the rest of this line is poisoned too */
      if (left >= limit) { e->skipping = 1; off = e->cinlen; }
      else if (e->cin_eof) off = e->cinlen; /* a partial line at EOF is no command */
      break;
    }
    len = (size_t)(lf - s) + 1;
    if (len > limit) badline(e, R_TOOLONG);
    else if (!wellformed(s, len)) badline(e, R_BADLINE);
    else if (SMTP_SOUTSIZE - e->soutlen < len + 6) break;
    else command(e, s, len, off + len == e->cinlen, poisoned);
    off += len;
  }
  if (!off) return 0;
  memmove(e->cin, e->cin + off, e->cinlen - off);
  e->cinlen -= off;
  e->poison = e->poison > off ? e->poison - off : 0;
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

/* The smtpd's extension verbs that the table above does not know: the
 * client may use them as the smtpd offered them. */
static void keep_keyword(struct smtp *e, const char *s, size_t n)
{
  size_t i;
  if (wordis(s, n, "chunking")) { e->chunking = 1; return; }
  if (!n || known(s, n) >= 0 || offered(e, s, n)) return;
  if (SMTP_KEYSPACE - e->keyslen < n + 1) { e->keysfull = 1; return; }
  for (i = 0; i < n; i++) e->keys[e->keyslen + i] = (char)lower((unsigned char)s[i]);
  e->keys[e->keyslen + n] = 0;
  e->keyslen += n + 1;
}

/* One line of a 2xx EHLO reply: the domain line stays first, AUTH goes
 * before TLS unless allowed, REQUIRETLS before TLS, XCLIENT and XFORWARD
 * always (see c_trusted()), the smtpd's STARTTLS always (ours is added
 * last when TLS is on offer). The line kept last is held back until
 * we know whether another follows it. */
static void rewrite_line(struct smtp *e, const char *line, size_t len, int first)
{
  size_t n = len - 1;
  const char *text;
  int bare = line[3] == '\r' || line[3] == '\n';
  if (n && line[n - 1] == '\r') n--;
  text = line + 4;
  n = bare ? 0 : n - 4;
  if (first) {
    e->keyslen = 0;
    e->keysfull = 0;
    e->chunking = 0;
  } else {
    size_t k;
    for (k = 0; k < n && text[k] != ' ' && text[k] != '='; k++) ;
    if (wordis(text, k, "starttls") || wordis(text, k, "xclient") || wordis(text, k, "xforward"))
      return;
    if (wordis(text, k, "auth") && !e->tls && !plainauth(e)) return;
    if (wordis(text, k, "requiretls") && !e->tls) return;
    keep_keyword(e, text, k);
  }
  finalize_held(e, 0);
  e->held = e->coutlen;
  e->hasheld = 1;
  e->heldbare = bare;
  memcpy(e->cout + e->coutlen, line, 3);
  e->cout[e->coutlen + 3] = '-';
  memcpy(e->cout + e->coutlen + 4, text, n);
  memcpy(e->cout + e->coutlen + 4 + n, "\r\n", 2);
  e->coutlen += n + 6;
}

static void end_reply(struct smtp *e)
{
  int kind = e->rkind;
  e->inreply = 0;
  if (e->rewrite) {
    if (!e->tls && !e->declined) {
      char line[3 + sizeof " STARTTLS\r\n"];
      finalize_held(e, 0);
      memcpy(line, e->rcode, 3);
      memcpy(line + 3, " STARTTLS\r\n", sizeof line - 3);
      append(e, line, sizeof line - 1);
    } else finalize_held(e, 1);
  }
  e->coutcommit = e->coutlen;
  memcpy(e->lastcode, e->rcode, 3);
  if (kind < 0) return;
  if (kind == Q_GREET) {
    /* the client had its greeting before TLS: this one is ours */
    qpop(e);
    if (e->rcode[0] != '2') closeup(e, SMTP_WHY_GREETING, 1, R_GONE);
    return;
  }
  if (kind == Q_STARTTLS) {
    if (!memcmp(e->rcode, "421", 3)) {
      /* the smtpd is closing: that is the client's answer */
      qpop(e);
      closeup(e, SMTP_WHY_SERVER421, 0, -1);
      return;
    }
    /* pump() sends the answer, and settles it then: bytes may still come */
    qset(e, 0, Q_LOCAL + (e->rcode[0] == '2' ? R_TLSREADY : R_TLSUNAVAIL));
    return;
  }
  if (kind == Q_AUTH) {
    e->datawait = 0;
    /* a challenge: the exchange goes on, and the AUTH still owes its reply */
    if (!memcmp(e->rcode, "334", 3)) { e->authresp = 1; return; }
  }
  if (kind == Q_DATA) {
    e->datawait = 0;
    if (!memcmp(e->rcode, "354", 3)) {
      e->content = SMTP_C_DATA;
      e->dstate = D_BOL;
      e->chunk = 0;
    }
  }
  qpop(e);
}

static int isdigit_(int c) { return c >= '0' && c <= '9'; }

/* A reply that starts while none is owed, or that would answer a BDAT
 * whose chunk is still being passed on (the one owed then is the BDAT's,
 * last in the queue), or any during DATA content: the smtpd and we
 * disagree on where content ends (smuggling, or a broken smtpd), so that
 * it answers what the client sent as content. Passing such replies on
 * would give a command two, and tell an attacker it worked. While the
 * engine forwards commands raw, the queue does not hold them all: no
 * reply is stray then. An unasked 421 is the smtpd closing (RFC 5321
 * 3.8), and passes. */
static int stray(const struct smtp *e, const char *line)
{
  if (e->phase != SMTP_P_PLAIN && e->phase != SMTP_P_GATE && e->phase != SMTP_P_COMMANDS)
    return 0;
  if (!memcmp(line, "421", 3)) return 0;
  return !e->qlen || e->content == SMTP_C_DATA || (e->content == SMTP_C_BDAT && e->qlen == 1);
}

/* Returns 0 if the line is no SMTP reply line. */
static int reply_line(struct smtp *e, const char *line, size_t len)
{
  int last, first;
  if (len < 4 || line[0] < '2' || line[0] > '5' || !isdigit_(line[1])
      || !isdigit_(line[2]))
    return 0;
  switch (line[3]) {
  case '-': case ' ': case '\n': break;
  case '\r': if (len == 5) break; return 0;
  default: return 0;
  }
  last = line[3] != '-';
  first = !e->inreply;
  if (first && stray(e, line)) {
    size_t i, k = len - (line[len - 2] == '\r' ? 2 : 1);
    if (k > sizeof e->stray - 1) k = sizeof e->stray - 1;
    for (i = 0; i < k; i++) {
      e->stray[i] = line[i];
      if (line[i] < ' ' || line[i] > '~') e->stray[i] = '?';
    }
    e->stray[k] = 0;
    closeup(e, SMTP_WHY_STRAY, 1, R_BROKEN);
    return 1;
  }
  if (first) {
    e->inreply = 1;
    e->rkind = e->qlen ? (int)qkind(e, 0) : -1;
    memcpy(e->rcode, line, 3);
    e->rewrite = e->rkind == Q_EHLO && line[0] == '2';
  }
  if (e->rewrite) rewrite_line(e, line, len, first);
  /* the reply to our RSET is ours, unless the smtpd is closing; so is
   * the greeting of a new smtpd after TLS */
  else if (e->rkind != Q_GREET && (e->rkind != Q_STARTTLS || !memcmp(e->rcode, "421", 3)))
    append(e, line, len);
  if (last) end_reply(e);
  return 1;
}

static int serving(const struct smtp *e)
{
  return e->phase == SMTP_P_PLAIN || e->phase == SMTP_P_TLSWAIT
    || e->phase == SMTP_P_GATE || e->phase == SMTP_P_COMMANDS || e->phase == SMTP_P_HANDOVER;
}

static int parse_server(struct smtp *e)
{
  size_t off = 0;
  while (serving(e) && off < e->sinlen) {
    const char *s = e->sin + off;
    size_t left = e->sinlen - off;
    const char *lf = memchr(s, '\n', left);
    size_t len;
    if (e->phase == SMTP_P_HANDOVER && !e->qspecial) break;
    if (!e->inreply && e->qlen && qkind(e, 0) >= Q_LOCAL) break;
    if (!lf) {
      if (left == SMTP_SINSIZE) closeup(e, SMTP_WHY_SERVERLONG, 1, R_BROKEN);
      break;
    }
    len = (size_t)(lf - s) + 1;
    /* room for the line, our STARTTLS line and the reserve */
    if (SMTP_COUTSIZE - e->coutlen < len + 16 + SMTP_RESERVE) {
      size_t upto = e->hasheld ? e->held : e->coutlen;
      if (e->coutcommit || upto == 0) break;
      /* a reply bigger than the buffer: its first lines go out now */
      e->coutcommit = upto;
      break;
    }
    if (!reply_line(e, s, len)) {
      closeup(e, SMTP_WHY_SERVERBROKEN, 1, R_BROKEN);
      break;
    }
    off += len;
  }
  if (!off) return 0;
  memmove(e->sin, e->sin + off, e->sinlen - off);
  e->sinlen -= off;
  return 1;
}

/* Local replies go out when every reply owed before them has. The answer
 * to STARTTLS is settled here, as it goes: client bytes that came while it
 * waited make it a refusal. */
static int pump(struct smtp *e)
{
  int moved = 0;
  while (!e->inreply && e->qlen && qkind(e, 0) >= Q_LOCAL && e->phase != SMTP_P_CLOSE) {
    enum reply r = (enum reply)(qkind(e, 0) - Q_LOCAL);
    /* Q_STARTTLS is always last: alone in the queue, it is its answer */
    int answer = e->phase == SMTP_P_TLSWAIT && e->qlen == 1;
    if (answer) {
      /* STARTTLS ended what cin held: anything there now came after it */
      if (e->cinlen) r = R_PIPELINED;
      else if (e->cin_eof) r = R_TLSUNAVAIL;
    }
    if (!emitreply(e, r)) break;
    qpop(e);
    moved = 1;
    if (answer) e->phase = r == R_TLSREADY ? SMTP_P_HANDSHAKE : SMTP_P_PLAIN;
    if (r == R_ERRORS) closeup(e, SMTP_WHY_ERRORS, 1, -1);
    if (r == R_BDATARGS) closeup(e, SMTP_WHY_BDAT, 1, R_BDATCLOSE);
    if (r == R_BARELF || r == R_BARECR || r == R_NUL) closeup(e, SMTP_WHY_CONTENT, 1, R_REFUSED);
  }
  if (e->phase == SMTP_P_GONE && !e->qlen) {
    closeup(e, e->quit ? SMTP_WHY_QUIT : e->cin_eof ? SMTP_WHY_CLIENTEOF : SMTP_WHY_SERVEREOF,
            e->exitcode, -1);
    moved = 1;
  }
  return moved;
}

/* In the handover, client bytes are no longer commands: they go raw. */
static int move_raw(struct smtp *e)
{
  size_t n = SMTP_SOUTSIZE - e->soutlen;
  if (e->phase != SMTP_P_HANDOVER || !e->cinlen || !n) return 0;
  if (n > e->cinlen) n = e->cinlen;
  memcpy(e->sout + e->soutlen, e->cin, n);
  e->soutlen += n;
  memmove(e->cin, e->cin + n, e->cinlen - n);
  e->cinlen -= n;
  return 1;
}

/* The smtpd has ended while the engine is in the middle: every reply owed
 * becomes a 421 (RFC 5321 3.8), and if none is owed the client still hears
 * why the connection closes, unless the smtpd said goodbye itself. */
static int server_gone(struct smtp *e)
{
  unsigned i;
  if (!e->sin_eof || !serving(e) || e->refused || memchr(e->sin, '\n', e->sinlen)) return 0;
  if (e->phase == SMTP_P_HANDOVER && !e->qspecial) return 0;
  e->coutlen = e->coutcommit; /* a reply cut short is no reply */
  e->hasheld = 0;
  e->inreply = 0;
  /* a client that went without QUIT is a protocol-level end too */
  e->exitcode = e->qlen || (e->cin_eof && !e->quit) ? 1 : 0;
  if (!e->qlen && !e->quit && !e->cin_eof && memcmp(e->lastcode, "221", 3) != 0
      && memcmp(e->lastcode, "421", 3) != 0)
    qpush(e, Q_LOCAL + R_GONE);
  for (i = 0; i < e->qlen; i++) qset(e, i, Q_LOCAL + R_GONE);
  e->qspecial = e->qlen;
  e->phase = SMTP_P_GONE;
  e->content = SMTP_C_NONE;
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
    if (e->phase == SMTP_P_HANDOVER && !e->qspecial) {
      e->phase = SMTP_P_RELAY;
      moved = 0;
    }
  } while (moved);
}

size_t smtp_client_room(struct smtp *e, char **p)
{
  e->direct = 0;
  if (e->cin_eof) return 0;
  *p = e->cin + e->cinlen;
  switch (e->phase) {
  case SMTP_P_PLAIN: case SMTP_P_GATE: case SMTP_P_COMMANDS:
    if (!parsing(e)) return 0;
    if ((e->content == SMTP_C_DATA || e->content == SMTP_C_BDAT) && !e->cinlen) {
      /* content is read where it leaves from; what follows its end is
       * moved back to cin, so at most cin's size is offered */
      size_t room = SMTP_SOUTSIZE - e->soutlen;
      e->direct = 1;
      *p = e->sout + e->soutlen;
      return room < SMTP_CINSIZE ? room : SMTP_CINSIZE;
    }
    /* fall through */
  case SMTP_P_HANDOVER: case SMTP_P_TLSWAIT:
    return SMTP_CINSIZE - e->cinlen;
  default:
    return 0;
  }
}

void smtp_client_input(struct smtp *e, size_t n)
{
  if (e->direct) {
    size_t k = frame(e, e->sout + e->soutlen, n);
    memcpy(e->cin, e->sout + e->soutlen + k, n - k);
    e->cinlen = n - k;
    e->soutlen += k;
    e->direct = 0;
  } else {
    if (e->phase == SMTP_P_TLSWAIT) {
      /* nothing may follow STARTTLS: these are refused, one reply each */
      e->poison = e->cinlen + n;
    }
    e->cinlen += n;
  }
  advance(e);
}

void smtp_client_eof(struct smtp *e)
{
  e->cin_eof = 1;
  e->direct = 0;
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
  return e->phase == SMTP_P_CLOSE || e->phase == SMTP_P_GONE || e->refused ? 0 : e->soutlen;
}

void smtp_server_sent(struct smtp *e, size_t n)
{
  memmove(e->sout, e->sout + n, e->soutlen - n);
  e->soutlen -= n;
  advance(e);
}

int smtp_server_done(const struct smtp *e)
{
  if (e->phase == SMTP_P_CLOSE || e->phase == SMTP_P_GONE || e->refused) return 1;
  /* after the handover the relay passes the client's EOF on, after the leftovers */
  return e->cin_eof && !e->soutlen && !e->cinlen
    && (e->phase == SMTP_P_PLAIN || e->phase == SMTP_P_GATE || e->phase == SMTP_P_COMMANDS);
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
const char *smtp_badcontent(const struct smtp *e) { return e->badseq; }
const char *smtp_stray(const struct smtp *e) { return e->stray; }

int smtp_final_reply_owed(const struct smtp *e)
{
  unsigned i;
  if (e->content != SMTP_C_NONE) return 0; /* the client is still sending */
  for (i = 0; i < e->qlen; i++)
    if (qkind(e, i) == Q_END) return 1;
  return 0;
}

size_t smtp_tls_started(struct smtp *e)
{
  size_t dropped = e->sinlen;
  e->tls = 1;
  e->phase = SMTP_P_GATE;
  e->cinlen = e->sinlen = 0;
  e->skipping = e->errors = 0;
  e->poison = 0;
  e->content = SMTP_C_NONE;
  e->keyslen = 0;
  e->keysfull = 0;
  e->chunking = 0;
  e->quit = 0;
  memset(e->lastcode, 0, sizeof e->lastcode);
  if (e->flags & SMTP_FRESH) {
    e->sin_eof = 0;
    e->inreply = 0;
    qpush(e, Q_GREET);
  }
  advance(e);
  return dropped;
}

void smtp_timeout(struct smtp *e)
{
  closeup(e, SMTP_WHY_TIMEOUT, 99, R_TIMEOUT);
}

void smtp_leftover(const struct smtp *e, struct smtp_leftover *l)
{
  l->toclient[0] = e->cout; l->toclientlen[0] = e->coutcommit;
  l->toclient[1] = e->sin; l->toclientlen[1] = e->sinlen;
  l->toserver[0] = e->sout; l->toserverlen[0] = e->soutlen;
  l->toserver[1] = e->cin; l->toserverlen[1] = e->cinlen;
}
