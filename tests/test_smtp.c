/* Unit tests of the SMTP engine: bytes in, bytes and decisions out. */
#include <stdlib.h>
#include "smtp.h"
#include "check.h"

static struct smtp e;
static char outbuf[1 << 20];

static void start(unsigned flags)
{
  smtp_init(&e, flags);
}

/* Feeds what the engine takes; returns how many bytes it took. */
static size_t client_n(const char *s, size_t n)
{
  size_t done = 0;
  while (done < n) {
    char *p;
    size_t room = smtp_client_room(&e, &p);
    if (!room) break;
    if (room > n - done) room = n - done;
    memcpy(p, s + done, room);
    smtp_client_input(&e, room);
    done += room;
  }
  return done;
}

static void client(const char *s)
{
  size_t n = strlen(s);
  CHECK(client_n(s, n) == n);
}

static size_t server_n(const char *s, size_t n)
{
  size_t done = 0;
  while (done < n) {
    char *p;
    size_t room = smtp_server_room(&e, &p);
    if (!room) break;
    if (room > n - done) room = n - done;
    memcpy(p, s + done, room);
    smtp_server_input(&e, room);
    done += room;
  }
  return done;
}

static void server(const char *s)
{
  size_t n = strlen(s);
  CHECK(server_n(s, n) == n);
}

/* What the engine has for the client since the last call, as a string. */
static const char *toclient(void)
{
  const char *p;
  size_t n, len = 0;
  while ((n = smtp_client_output(&e, &p)) > 0) {
    if (len + n >= sizeof outbuf) n = sizeof outbuf - 1 - len;
    memcpy(outbuf + len, p, n);
    len += n;
    smtp_client_sent(&e, n);
  }
  outbuf[len] = 0;
  return outbuf;
}

static const char *toserver(void)
{
  const char *p;
  size_t n, len = 0;
  while ((n = smtp_server_output(&e, &p)) > 0) {
    memcpy(outbuf + len, p, n);
    len += n;
    smtp_server_sent(&e, n);
  }
  outbuf[len] = 0;
  return outbuf;
}

/* A session past the greeting. */
static void greeted(unsigned flags)
{
  start(flags);
  server("220 mx.example ESMTP\r\n");
  CHECK_STR(toclient(), "220 mx.example ESMTP\r\n");
}

/* --- replies --- */

static void greeting_multiline(void)
{
  start(0);
  server("220-a\r\n220-b\r\n220 c\r\n");
  CHECK_STR(toclient(), "220-a\r\n220-b\r\n220 c\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
}

static void greeting_split_bytewise(void)
{
  const char *g = "220-first\r\n220 second\r\n";
  size_t i;
  start(0);
  for (i = 0; g[i]; i++) CHECK(server_n(g + i, 1) == 1);
  CHECK_STR(toclient(), g);
}

static void bare_code_reply(void)
{
  greeted(0);
  client("NOOP\r\n");
  CHECK_STR(toserver(), "NOOP\r\n");
  server("250\r\n");
  CHECK_STR(toclient(), "250\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
}

static void garbage_reply_is_fatal(void)
{
  greeted(0);
  client("NOOP\r\n");
  toserver();
  server("hello there\r\n");
  CHECK_STR(toclient(), "421 4.3.0 Mail server error, closing connection\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK(smtp_exitcode(&e) == 1);
  CHECK(smtp_why(&e) == SMTP_WHY_SERVERBROKEN);
}

static void garbage_greeting_is_fatal(void)
{
  start(0);
  server("* OK IMAP4 ready\r\n");
  CHECK_STR(toclient(), "421 4.3.0 Mail server error, closing connection\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
}

static void multiline_help_then_next(void)
{
  greeted(0);
  client("HELP\r\nNOOP\r\nRCPT TO:<a@b>\r\n");
  CHECK_STR(toserver(), "HELP\r\nNOOP\r\n");
  server("214-line one\r\n214-line two\r\n");
  CHECK_STR(toclient(), ""); /* a reply goes out whole */
  server("214 end\r\n250 2.0.0 ok\r\n");
  CHECK_STR(toclient(), "214-line one\r\n214-line two\r\n214 end\r\n250 2.0.0 ok\r\n"
            "503 5.5.1 Bad sequence of commands: MAIL first\r\n");
}

static void unsolicited_then_eof(void)
{
  greeted(0);
  server("421 mx.example timeout\r\n");
  CHECK_STR(toclient(), "421 mx.example timeout\r\n");
  smtp_server_eof(&e);
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK(smtp_exitcode(&e) == 0);
  CHECK_STR(toclient(), "");
}

static void long_reply_lines(void)
{
  static char line[4200], want[4300];
  greeted(0);
  memset(line, 'x', sizeof line);
  memcpy(line, "250-mx.example hello ", 21);
  memcpy(line + 4000, "\r\n250 PIPELINING\r\n", 19);
  client("EHLO x\r\n");
  toserver();
  server(line);
  memcpy(want, line, 4002);
  strcpy(want + 4002, "250-PIPELINING\r\n250 STARTTLS\r\n");
  CHECK_STR(toclient(), want);
  client("HELP\r\n");
  toserver();
  memcpy(line, "214 ", 4);
  memcpy(line + 3000, "\r\n", 3);
  server(line);
  CHECK_STR(toclient(), line);
}

static void overlong_reply_is_fatal(void)
{
  static char line[SMTP_REPLYMAX + 10];
  greeted(0);
  client("HELP\r\n");
  toserver();
  memset(line, 'y', sizeof line - 1);
  memcpy(line, "214 ", 4);
  line[sizeof line - 1] = 0;
  server_n(line, sizeof line - 1);
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK(smtp_why(&e) == SMTP_WHY_SERVERLONG);
  CHECK_STR(toclient(), "421 4.3.0 Mail server error, closing connection\r\n");
}

/* --- EHLO rewriting --- */

static void ehlo_single_line(void)
{
  greeted(0);
  client("EHLO client.example\r\n");
  CHECK_STR(toserver(), "EHLO client.example\r\n");
  server("250 mx.example\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250 STARTTLS\r\n");
}

static void ehlo_multi_line(void)
{
  greeted(0);
  client("ehlo client.example\r\n");
  toserver();
  server("250-mx.example Hello\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
  CHECK_STR(toclient(), "250-mx.example Hello\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n");
}

static void ehlo_bare_domain_line(void)
{
  greeted(0);
  client("EHLO x\r\n");
  toserver();
  server("250\r\n");
  CHECK_STR(toclient(), "250-\r\n250 STARTTLS\r\n");
}

static void ehlo_5xx_untouched(void)
{
  greeted(0);
  client("EHLO x\r\n");
  toserver();
  server("550-not you\r\n550 go away\r\n");
  CHECK_STR(toclient(), "550-not you\r\n550 go away\r\n");
  client("EHLO y\r\n");
  toserver();
  server("421 4.3.2 busy\r\n");
  CHECK_STR(toclient(), "421 4.3.2 busy\r\n");
}

static void ehlo_starttls_already(void)
{
  greeted(0);
  client("EHLO x\r\n");
  toserver();
  server("250-mx.example\r\n250-STARTTLS\r\n250 SIZE 1000\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250-SIZE 1000\r\n250 STARTTLS\r\n");
  client("STARTTLS\r\n");
  CHECK_STR(toserver(), "RSET\r\n");
}

static void ehlo_auth_hidden(void)
{
  greeted(0);
  client("EHLO x\r\n");
  toserver();
  server("250-mx.example\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=LOGIN\r\n250-SIZE 10\r\n250 auth cram-md5\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250-SIZE 10\r\n250 STARTTLS\r\n");
  client("AUTH PLAIN AGFAYg==\r\n");
  CHECK_STR(toserver(), "");
  CHECK_STR(toclient(), "530 5.7.0 Must issue a STARTTLS command first\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
}

static void ehlo_auth_last_with_starttls(void)
{
  greeted(0);
  client("EHLO x\r\n");
  toserver();
  server("250-mx.example\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250 STARTTLS\r\n");
}

static void plainauth_allowed(void)
{
  greeted(SMTP_PLAINAUTH);
  client("EHLO x\r\n");
  toserver();
  server("250-mx.example\r\n250 AUTH PLAIN\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n");
  client("AUTH PLAIN AGFAYg==\r\n");
  CHECK_STR(toserver(), "AUTH PLAIN AGFAYg==\r\n");
  CHECK(smtp_status(&e) == SMTP_RELAY);
}

/* --- command policy --- */

static const char *joined(const char *const p[2], const size_t n[2])
{
  static char s[SMTP_COUTSIZE + SMTP_SINSIZE + 1];
  memcpy(s, p[0], n[0]);
  memcpy(s + n[0], p[1], n[1]);
  s[n[0] + n[1]] = 0;
  return s;
}

static void helo_declines(void)
{
  greeted(0);
  client("HELO x\r\nMAIL FROM:<a@b>\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
  CHECK(e.phase == SMTP_P_COMMANDS);
  CHECK_STR(toserver(), "HELO x\r\nMAIL FROM:<a@b>\r\n");
}

static void mail_declines(void)
{
  greeted(0);
  client("MAIL FROM:<a@b>\r\n");
  CHECK(e.phase == SMTP_P_COMMANDS);
  CHECK_STR(toserver(), "MAIL FROM:<a@b>\r\n");
}

static void plainauth_helo_relays(void)
{
  greeted(SMTP_PLAINAUTH);
  client("HELO x\r\n");
  CHECK(smtp_status(&e) == SMTP_RELAY);
}

static void requiretls_policy(void)
{
  greeted(SMTP_REQUIRETLS | SMTP_PLAINAUTH);
  client("HELO x\r\n");
  CHECK_STR(toserver(), "HELO x\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
  server("250 mx.example\r\n");
  CHECK_STR(toclient(), "250 mx.example\r\n");
  client("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nVRFY x\r\nEXPN y\r\nAUTH PLAIN x\r\n");
  CHECK_STR(toserver(), "");
  CHECK_STR(toclient(),
            "530 5.7.0 Must issue a STARTTLS command first\r\n"
            "530 5.7.0 Must issue a STARTTLS command first\r\n"
            "530 5.7.0 Must issue a STARTTLS command first\r\n"
            "530 5.7.0 Must issue a STARTTLS command first\r\n"
            "530 5.7.0 Must issue a STARTTLS command first\r\n"
            "530 5.7.0 Must issue a STARTTLS command first\r\n");
  client("NOOP\r\nRSET\r\nHELP\r\nQUIT\r\n");
  CHECK_STR(toserver(), "NOOP\r\nRSET\r\nHELP\r\nQUIT\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
}

static void requiretls_hides_auth(void)
{
  greeted(SMTP_REQUIRETLS | SMTP_PLAINAUTH);
  client("EHLO x\r\n");
  toserver();
  server("250-mx.example\r\n250 AUTH PLAIN\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250 STARTTLS\r\n");
}

/* UCSPITLS=-: declined from the greeting on, the engine in the middle */
static void notls_policy(void)
{
  greeted(SMTP_NOTLS | SMTP_REQUIRETLS);
  CHECK(e.phase == SMTP_P_COMMANDS);
  client("EHLO x\r\n");
  CHECK_STR(toserver(), "EHLO x\r\n");
  server("250-mx.example\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 SIZE 10\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250 SIZE 10\r\n");
  client("STARTTLS\r\nAUTH PLAIN AGFAYg==\r\n");
  CHECK_STR(toserver(), "");
  CHECK_STR(toclient(), "502 5.5.1 STARTTLS not offered to this client\r\n"
                        "530 5.7.0 Must issue a STARTTLS command first\r\n");
  client("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
  CHECK_STR(toserver(), "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
  CHECK(e.phase == SMTP_P_COMMANDS);
}

static void notls_plainauth(void)
{
  greeted(SMTP_NOTLS | SMTP_PLAINAUTH);
  client("EHLO x\r\n");
  toserver();
  server("250-mx.example\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250 AUTH PLAIN\r\n");
  client("STARTTLS\r\n");
  CHECK_STR(toclient(), "502 5.5.1 STARTTLS not offered to this client\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
  client("AUTH PLAIN AGFAYg==\r\n");
  CHECK_STR(toserver(), "AUTH PLAIN AGFAYg==\r\n");
  CHECK(smtp_status(&e) == SMTP_RELAY);
}

/* the smtpd's own single-line reply after HELO stays as it is */
static void notls_helo(void)
{
  greeted(SMTP_NOTLS);
  client("HELO x\r\n");
  CHECK_STR(toserver(), "HELO x\r\n");
  server("250 mx.example\r\n");
  CHECK_STR(toclient(), "250 mx.example\r\n");
  CHECK(e.phase == SMTP_P_COMMANDS);
}

static void local_replies(void)
{
  greeted(0);
  client("RCPT TO:<a@b>\r\nDATA\r\nFROB\r\nSTARTTLS now\r\n\r\n");
  CHECK_STR(toserver(), "");
  CHECK_STR(toclient(),
            "503 5.5.1 Bad sequence of commands: MAIL first\r\n"
            "503 5.5.1 Bad sequence of commands: MAIL first\r\n"
            "500 5.5.1 Command unrecognized\r\n"
            "501 5.5.4 STARTTLS takes no parameters\r\n"
            "500 5.5.2 Syntax error: empty command\r\n");
  /* the refused BDAT's 10 octets were its chunk, not commands */
  client("BDAT 10 LAST\r\nFROB\r\nSTARTTLS now\r\n");
  CHECK_STR(toclient(), "503 5.5.1 Bad sequence of commands: MAIL first\r\n"
            "500 5.5.1 Command unrecognized\r\n");
}

static void verbs_case_insensitive(void)
{
  greeted(0);
  client("nOoP\r\nrset\r\nVrFy x\r\nExPn y\r\nhelp\r\nQuIt\r\n");
  CHECK_STR(toserver(), "nOoP\r\nrset\r\nVrFy x\r\nExPn y\r\nhelp\r\nQuIt\r\n");
  client("rcpt TO:<a>\r\n");
  server("250 a\r\n250 b\r\n250 c\r\n250 d\r\n214 e\r\n221 f\r\n");
  CHECK_STR(toclient(), "250 a\r\n250 b\r\n250 c\r\n250 d\r\n214 e\r\n221 f\r\n"
            "503 5.5.1 Bad sequence of commands: MAIL first\r\n");
  client("StartTLS\r\n");
  CHECK_STR(toserver(), "RSET\r\n");
}

/* --- ordering and pipelining --- */

static void local_never_overtakes(void)
{
  greeted(0);
  client("EHLO x\r\nRCPT TO:<a@b>\r\nNOOP\r\nFROB\r\n");
  CHECK_STR(toserver(), "EHLO x\r\nNOOP\r\n");
  CHECK_STR(toclient(), "");
  server("250 mx.example\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250 STARTTLS\r\n503 5.5.1 Bad sequence of commands: MAIL first\r\n");
  server("250 2.0.0 ok\r\n");
  CHECK_STR(toclient(), "250 2.0.0 ok\r\n500 5.5.1 Command unrecognized\r\n");
}

static void ehlo_noop_order(void)
{
  greeted(0);
  client("EHLO x\r\nNOOP\r\n");
  CHECK_STR(toserver(), "EHLO x\r\nNOOP\r\n");
  server("250-mx.example\r\n250 PIPELINING\r\n250 2.0.0 noop\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n250 2.0.0 noop\r\n");
}

/* n pipelined commands, alternating forwarded NOOP and local RCPT, fed with
 * the engine's own backpressure; every reply must come back in order. */
static void pipelined(int n)
{
  static char in[200000], want[400000], got[400000];
  size_t inlen = 0, fed = 0, wantlen = 0, gotlen = 0;
  int i, served = 0, rounds = 0;
  greeted(0);
  for (i = 0; i < n; i++) {
    if (i % 3 == 2) {
      inlen += (size_t)sprintf(in + inlen, "RCPT TO:<%d@x>\r\n", i);
      wantlen += (size_t)sprintf(want + wantlen, "503 5.5.1 Bad sequence of commands: MAIL first\r\n");
    } else {
      inlen += (size_t)sprintf(in + inlen, "NOOP %d\r\n", i);
      wantlen += (size_t)sprintf(want + wantlen, "250 2.0.0 ok %d\r\n", i);
    }
  }
  while ((fed < inlen || served < n) && rounds++ < 100000) {
    const char *s;
    char r[64];
    fed += client_n(in + fed, inlen - fed);
    CHECK(e.qlen <= SMTP_QMAX);
    for (s = toserver(); (s = strstr(s, "NOOP ")) != 0; s++) {
      int k = atoi(s + 5);
      sprintf(r, "250 2.0.0 ok %d\r\n", k);
      CHECK(server_n(r, strlen(r)) == strlen(r));
      served++;
    }
    s = toclient();
    memcpy(got + gotlen, s, strlen(s));
    gotlen += strlen(s);
    if (gotlen >= wantlen) break;
  }
  got[gotlen] = 0;
  want[wantlen] = 0;
  CHECK(gotlen == wantlen);
  CHECK(!strcmp(got, want));
}

static void pipelined_20_rset(void)
{
  int i;
  greeted(0);
  for (i = 0; i < 20; i++) client("RSET\r\n");
  for (i = 0; i < 20; i++) server("250 2.0.0 flushed\r\n");
  CHECK(strlen(toclient()) == 20 * strlen("250 2.0.0 flushed\r\n"));
}

static void pipelined_150(void) { pipelined(150); }
static void pipelined_1000(void) { pipelined(1000); }

static void queue_bounds_reading(void)
{
  static char in[SMTP_CINSIZE * 4];
  size_t i, took;
  greeted(0);
  for (i = 0; i + 6 <= sizeof in; i += 6) memcpy(in + i, "NOOP\r\n", 6);
  took = client_n(in, sizeof in - sizeof in % 6);
  CHECK(took < sizeof in - sizeof in % 6);
  CHECK(e.qlen <= SMTP_QMAX);
  {
    char *p;
    CHECK(smtp_client_room(&e, &p) == 0 || e.qlen < SMTP_QMAX - 1);
  }
}

/* --- malformed client lines --- */

static void overlong_line(void)
{
  static char line[SMTP_CMDMAX + 200];
  greeted(0);
  memset(line, 'a', sizeof line);
  memcpy(line, "NOOP ", 5);
  memcpy(line + sizeof line - 3, "\r\n", 3);
  client(line);
  client("NOOP\r\n");
  CHECK_STR(toserver(), "NOOP\r\n");
  server("250 ok\r\n");
  CHECK_STR(toclient(), "500 5.5.2 Line too long\r\n250 ok\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
}

static void line_limit_exact(void)
{
  static char line[SMTP_CMDMAX + 2];
  greeted(0);
  memset(line, 'a', sizeof line);
  memcpy(line, "NOOP ", 5);
  memcpy(line + SMTP_CMDMAX - 2, "\r\n", 3); /* 2048 octets with CRLF */
  client(line);
  CHECK(strlen(toserver()) == SMTP_CMDMAX);
  memcpy(line + SMTP_CMDMAX - 2, "a\r\n", 4); /* 2049 */
  client(line);
  CHECK_STR(toserver(), "");
  server("250 ok\r\n");
  CHECK_STR(toclient(), "250 ok\r\n500 5.5.2 Line too long\r\n");
}

static void huge_line_bounded(void)
{
  static char chunk[1000];
  int i;
  greeted(0);
  memset(chunk, 'z', sizeof chunk);
  for (i = 0; i < 400; i++) CHECK(client_n(chunk, sizeof chunk) == sizeof chunk);
  CHECK(e.cinlen < SMTP_CINSIZE);
  client("\r\nNOOP\r\n");
  CHECK_STR(toserver(), "NOOP\r\n");
  CHECK_STR(toclient(), "500 5.5.2 Line too long\r\n");
}

static void nul_bare_cr_lf(void)
{
  greeted(0);
  CHECK(client_n("EHLO x\0yy\r\nQUIT\r\n", 17) == 17);
  CHECK_STR(toserver(), "QUIT\r\n");
  client("NOOP\rEHLO x\r\n");
  client("NOOP\n");
  CHECK_STR(toserver(), "");
  server("221 bye\r\n");
  CHECK_STR(toclient(),
            "500 5.5.2 Syntax error: NUL, bare CR or bare LF in command line\r\n"
            "221 bye\r\n"
            "500 5.5.2 Syntax error: NUL, bare CR or bare LF in command line\r\n"
            "500 5.5.2 Syntax error: NUL, bare CR or bare LF in command line\r\n");
}

static void eight_bit_passes(void)
{
  greeted(0);
  client("NOOP \xc3\xa9\xff\r\n");
  CHECK_STR(toserver(), "NOOP \xc3\xa9\xff\r\n");
}

static void too_many_errors(void)
{
  int i;
  greeted(0);
  client("NOOP\r\n");
  for (i = 0; i < SMTP_MAXERRORS; i++) client("bad\rline\r\n");
  CHECK_STR(toserver(), "NOOP\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
  server("250 ok\r\n");
  {
    const char *s = toclient();
    CHECK(!strncmp(s, "250 ok\r\n500 5.5.2", 17));
    CHECK(strstr(s, "421 4.7.0 Too many errors, closing connection\r\n") != 0);
  }
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK(smtp_exitcode(&e) == 1);
}

/* --- STARTTLS --- */

static void starttls_ok(void)
{
  greeted(0);
  client("EHLO x\r\nSTARTTLS\r\n");
  CHECK_STR(toserver(), "EHLO x\r\nRSET\r\n");
  server("250 mx.example\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
  server("250 2.0.0 flushed\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n");
  CHECK(smtp_status(&e) == SMTP_STARTTLS);
  {
    char *p;
    CHECK(smtp_client_room(&e, &p) == 0);
    CHECK(smtp_server_room(&e, &p) == 0);
  }
}

static void starttls_rset_fails(void)
{
  greeted(0);
  client("STARTTLS\r\n");
  CHECK_STR(toserver(), "RSET\r\n");
  server("451 nope\r\n");
  CHECK_STR(toclient(), "454 4.7.0 TLS not available due to temporary reason\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
  client("NOOP\r\n");
  CHECK_STR(toserver(), "NOOP\r\n");
}

static void starttls_injection(void)
{
  greeted(0);
  client("STARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<a@b>\r\n");
  CHECK_STR(toserver(), "");
  /* RFC 5321 4.2: each gets its reply; none runs */
  CHECK_STR(toclient(), "503 5.5.1 STARTTLS must end a pipelined group: the commands sent after it are refused\r\n"
            "503 5.5.1 Command sent after STARTTLS in the same group: refused\r\n"
            "503 5.5.1 Command sent after STARTTLS in the same group: refused\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
  client("NOOP\r\n");
  CHECK_STR(toserver(), "NOOP\r\n");
}

static void starttls_late_bytes(void)
{
  greeted(0);
  client("STARTTLS\r\n");
  CHECK_STR(toserver(), "RSET\r\n");
  client("MAIL FROM:<evil@x>\r\nRCPT TO:<a@b>\r\nQUIT\r\n");
  server("250 ok\r\n");
  CHECK_STR(toclient(), "503 5.5.1 STARTTLS must end a pipelined group: the commands sent after it are refused\r\n"
            "503 5.5.1 Command sent after STARTTLS in the same group: refused\r\n"
            "503 5.5.1 Command sent after STARTTLS in the same group: refused\r\n"
            "503 5.5.1 Command sent after STARTTLS in the same group: refused\r\n");
  CHECK_STR(toserver(), "");
  CHECK(smtp_status(&e) == SMTP_RUN);
}

static void starttls_client_gone(void)
{
  greeted(0);
  client("STARTTLS\r\n");
  toserver();
  smtp_client_eof(&e);
  server("250 ok\r\n");
  CHECK_STR(toclient(), "454 4.7.0 TLS not available due to temporary reason\r\n");
  CHECK(smtp_server_done(&e));
}

/* --- -e: a new smtpd after TLS --- */

/* Through the handshake with SMTP_FRESH: the first smtpd hears no RSET. */
static void fresh_tls(void)
{
  greeted(SMTP_FRESH);
  client("EHLO x\r\n");
  CHECK_STR(toserver(), "EHLO x\r\n");
  client("STARTTLS\r\n");
  CHECK_STR(toserver(), "");
  CHECK_STR(toclient(), "");
  server("250-mx.example\r\n250 8BITMIME\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250-8BITMIME\r\n250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n");
  CHECK(smtp_status(&e) == SMTP_STARTTLS);
  CHECK_STR(toserver(), "");
  CHECK(smtp_tls_started(&e) == 0);
  CHECK(smtp_status(&e) == SMTP_RUN);
}

static void fresh_greeting_is_ours(void)
{
  fresh_tls();
  /* the client's EHLO waits for the new smtpd's greeting */
  client("EHLO x\r\n");
  CHECK_STR(toserver(), "");
  server("220-new.example ESMTP\r\n220 hi\r\n");
  CHECK_STR(toclient(), "");
  CHECK_STR(toserver(), "EHLO x\r\n");
  server("250-new.example\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n");
  CHECK_STR(toclient(), "250-new.example\r\n250 AUTH PLAIN\r\n");
  CHECK(smtp_status(&e) == SMTP_RELAY);
}

static void fresh_greeting_refused(void)
{
  fresh_tls();
  server("554 5.7.1 go away\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK(smtp_why(&e) == SMTP_WHY_GREETING);
  CHECK_STR(toclient(), "421 4.3.0 Mail server unavailable, closing connection\r\n");
  CHECK(smtp_server_done(&e));
}

static void fresh_greeting_refused_ehlo_waiting(void)
{
  fresh_tls();
  client("EHLO x\r\n");
  server("421 4.3.2 busy\r\n");
  /* one reply for the one command */
  CHECK_STR(toclient(), "421 4.3.0 Mail server unavailable, closing connection\r\n");
  CHECK_STR(toserver(), "");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
}

static void fresh_smtpd_gone_before_greeting(void)
{
  fresh_tls();
  client("EHLO x\r\n");
  smtp_server_eof(&e);
  CHECK_STR(toclient(), "421 4.3.0 Mail server unavailable, closing connection\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
}

static void fresh_pipelined_starttls_refused(void)
{
  greeted(SMTP_FRESH);
  client("STARTTLS\r\nNOOP\r\n");
  CHECK_STR(toclient(), "503 5.5.1 STARTTLS must end a pipelined group: the commands sent after it are refused\r\n"
            "503 5.5.1 Command sent after STARTTLS in the same group: refused\r\n");
  CHECK_STR(toserver(), "");
  client("NOOP\r\n");
  client("STARTTLS\r\n");
  client("NOOP\r\n"); /* came while the answer waited */
  CHECK_STR(toserver(), "NOOP\r\n");
  server("250 ok\r\n");
  CHECK_STR(toclient(), "250 ok\r\n503 5.5.1 STARTTLS must end a pipelined group: the commands sent after it are refused\r\n"
            "503 5.5.1 Command sent after STARTTLS in the same group: refused\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
}

static void fresh_waits_for_earlier_replies(void)
{
  greeted(SMTP_FRESH);
  client("NOOP\r\n");
  client("STARTTLS\r\n");
  CHECK_STR(toserver(), "NOOP\r\n");
  CHECK_STR(toclient(), "");
  server("250 ok\r\n");
  CHECK_STR(toclient(), "250 ok\r\n220 2.0.0 Ready to start TLS\r\n");
  CHECK(smtp_status(&e) == SMTP_STARTTLS);
}

static void tls(unsigned flags)
{
  greeted(flags);
  client("STARTTLS\r\n");
  toserver();
  server("250 ok\r\n");
  toclient();
  CHECK(smtp_status(&e) == SMTP_STARTTLS);
  smtp_tls_started(&e);
  CHECK(smtp_status(&e) == SMTP_RUN);
}

static void gate_after_tls(void)
{
  tls(0);
  client("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nAUTH PLAIN x\r\nSTARTTLS\r\n");
  CHECK_STR(toserver(), "");
  CHECK_STR(toclient(), "503 5.5.1 Send EHLO first\r\n503 5.5.1 Send EHLO first\r\n"
            "503 5.5.1 Send EHLO first\r\n503 5.5.1 Send EHLO first\r\n");
  client("NOOP\r\nRSET\r\nHELP\r\n");
  CHECK_STR(toserver(), "NOOP\r\nRSET\r\nHELP\r\n");
  server("250 a\r\n250 b\r\n214 c\r\n");
  CHECK_STR(toclient(), "250 a\r\n250 b\r\n214 c\r\n");
  client("EHLO x\r\n");
  CHECK_STR(toserver(), "EHLO x\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
  server("250-mx.example\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250 AUTH PLAIN\r\n");
  CHECK(smtp_status(&e) == SMTP_RELAY);
}

static void tls_ehlo_single_line(void)
{
  tls(0);
  client("EHLO x\r\nMAIL FROM:<a@b>\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
  server("250 mx.example\r\n");
  CHECK_STR(toclient(), "250 mx.example\r\n");
  CHECK(smtp_status(&e) == SMTP_RELAY);
}

static void tls_helo_relays(void)
{
  tls(SMTP_REQUIRETLS);
  client("HELO x\r\n");
  CHECK(smtp_status(&e) == SMTP_RELAY);
  CHECK_STR(toserver(), "HELO x\r\n");
}

/* --- decision with replies pending --- */

static void decision_pending_ehlo(void)
{
  struct smtp_leftover l;
  greeted(SMTP_PLAINAUTH);
  client("EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
  CHECK_STR(toserver(), "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
  server("250-mx.example\r\n250 SIZE 1\r\n250 2.1.0 sender ok\r\n250 2.1.5 ");
  CHECK(smtp_status(&e) == SMTP_RELAY);
  /* MAIL came first: no STARTTLS on offer */
  CHECK_STR(toclient(), "250-mx.example\r\n250 SIZE 1\r\n");
  smtp_leftover(&e, &l);
  CHECK_STR(joined(l.toclient, l.toclientlen), "250 2.1.0 sender ok\r\n250 2.1.5 ");
}

static void decision_with_local_pending(void)
{
  greeted(0);
  client("EHLO x\r\nRCPT TO:<c@d>\r\nMAIL FROM:<a@b>\r\nDATA\r\n");
  CHECK_STR(toserver(), "EHLO x\r\nMAIL FROM:<a@b>\r\nDATA\r\n");
  server("250 mx.example\r\n");
  CHECK(e.phase == SMTP_P_COMMANDS);
  CHECK_STR(toclient(), "250 mx.example\r\n503 5.5.1 Bad sequence of commands: MAIL first\r\n");
}

static void helo_before_greeting(void)
{
  start(0);
  client("HELO x\r\n");
  CHECK(e.phase == SMTP_P_COMMANDS);
  CHECK_STR(toserver(), "HELO x\r\n");
  server("220 mx\r\n250 mx\r\n");
  CHECK_STR(toclient(), "220 mx\r\n250 mx\r\n");
}

static void ehlo_before_greeting(void)
{
  start(0);
  client("EHLO x\r\n");
  CHECK_STR(toserver(), "EHLO x\r\n");
  server("220 mx ESMTP\r\n250 mx\r\n");
  CHECK_STR(toclient(), "220 mx ESMTP\r\n250-mx\r\n250 STARTTLS\r\n");
}

/* --- ends --- */

static void client_halfclose(void)
{
  greeted(0);
  client("EHLO x\r\n");
  smtp_client_eof(&e);
  CHECK(!smtp_server_done(&e));
  CHECK_STR(toserver(), "EHLO x\r\n");
  CHECK(smtp_server_done(&e));
  server("250 mx.example\r\n");
  CHECK_STR(toclient(), "250-mx.example\r\n250 STARTTLS\r\n");
  smtp_server_eof(&e);
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  /* it went without QUIT */
  CHECK(smtp_exitcode(&e) == 1);
  CHECK(smtp_why(&e) == SMTP_WHY_CLIENTEOF);
}

static void client_quit_halfclose(void)
{
  greeted(0);
  client("QUIT\r\n");
  smtp_client_eof(&e);
  CHECK_STR(toserver(), "QUIT\r\n");
  server("221 bye\r\n");
  CHECK_STR(toclient(), "221 bye\r\n");
  smtp_server_eof(&e);
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK(smtp_exitcode(&e) == 0);
  CHECK(smtp_why(&e) == SMTP_WHY_QUIT);
}

static void client_drops_after_greeting(void)
{
  greeted(0);
  smtp_client_eof(&e);
  CHECK(smtp_server_done(&e));
  smtp_server_eof(&e);
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK_STR(toclient(), "");
  CHECK(smtp_exitcode(&e) == 1);
  CHECK(smtp_why(&e) == SMTP_WHY_CLIENTEOF);
}

static void client_eof_partial_line(void)
{
  greeted(0);
  client("NOOP\r\nQUI");
  smtp_client_eof(&e);
  CHECK_STR(toserver(), "NOOP\r\n");
  CHECK(smtp_server_done(&e));
}

static void server_eof_pending(void)
{
  greeted(0);
  client("NOOP\r\nRCPT TO:<a>\r\nHELP\r\n");
  toserver();
  smtp_server_eof(&e);
  CHECK_STR(toclient(), "421 4.3.0 Mail server unavailable, closing connection\r\n"
            "421 4.3.0 Mail server unavailable, closing connection\r\n"
            "421 4.3.0 Mail server unavailable, closing connection\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK(smtp_exitcode(&e) == 1);
}

static void server_never_started(void)
{
  start(0);
  smtp_server_eof(&e);
  CHECK_STR(toclient(), "421 4.3.0 Mail server unavailable, closing connection\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
}

static void timeout_421(void)
{
  greeted(0);
  client("NOOP\r\n");
  smtp_timeout(&e);
  CHECK_STR(toclient(), "421 4.4.2 Timeout, closing connection\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK(smtp_exitcode(&e) == 99);
}

static void timeout_mid_ehlo(void)
{
  greeted(0);
  client("EHLO x\r\n");
  toserver();
  server("250-mx.example\r\n250-SIZE\r\n");
  smtp_timeout(&e);
  CHECK_STR(toclient(), "421 4.4.2 Timeout, closing connection\r\n");
}

/* --- the whole plaintext session --- */

static void cleared(const char *ehlo_reply)
{
  greeted(0);
  client("EHLO c\r\n");
  toserver();
  server(ehlo_reply);
  toclient();
  client("MAIL FROM:<a@b>\r\n");
  CHECK_STR(toserver(), "MAIL FROM:<a@b>\r\n");
  server("250 2.1.0 ok\r\n");
  CHECK_STR(toclient(), "250 2.1.0 ok\r\n");
  CHECK(e.phase == SMTP_P_COMMANDS);
}

static void auth_after_helo(void)
{
  greeted(0);
  client("HELO c\r\n");
  server("250 mx\r\n");
  client("EHLO c\r\n");
  CHECK_STR(toserver(), "HELO c\r\nEHLO c\r\n");
  server("250-mx\r\n250-AUTH PLAIN LOGIN\r\n250-STARTTLS\r\n250 8BITMIME\r\n");
  CHECK_STR(toclient(), "250 mx\r\n250-mx\r\n250 8BITMIME\r\n");
  client("AUTH PLAIN AGFAYg==\r\nSTARTTLS\r\nNOOP\r\n");
  CHECK_STR(toserver(), "NOOP\r\n");
  server("250 ok\r\n");
  CHECK_STR(toclient(), "530 5.7.0 Must issue a STARTTLS command first\r\n"
            "503 5.5.1 STARTTLS is not available after HELO, MAIL or AUTH\r\n250 ok\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
}

static void auth_after_mail_rset(void)
{
  greeted(0);
  client("MAIL FROM:<a@b>\r\nRSET\r\nAUTH PLAIN AGFAYg==\r\nEHLO c\r\n");
  CHECK_STR(toserver(), "MAIL FROM:<a@b>\r\nRSET\r\nEHLO c\r\n");
  server("250 a\r\n250 b\r\n250-mx\r\n250 AUTH=LOGIN PLAIN\r\n");
  CHECK_STR(toclient(), "250 a\r\n250 b\r\n530 5.7.0 Must issue a STARTTLS command first\r\n250 mx\r\n");
}

static void data_content_is_not_commands(void)
{
  static char body[4000], want[4100];
  size_t n;
  cleared("250 mx\r\n");
  client("RCPT TO:<c@d>\r\nDATA\r\n");
  CHECK_STR(toserver(), "RCPT TO:<c@d>\r\nDATA\r\n");
  server("250 ok\r\n354 go\r\n");
  CHECK_STR(toclient(), "250 ok\r\n354 go\r\n");
  strcpy(body, "AUTH PLAIN AGFAYg==\r\nSTARTTLS\r\nEHLO x\r\nQUIT\r\n..\r\n.x\r\n");
  n = strlen(body);
  memset(body + n, 'q', 1500);
  strcpy(body + n + 1500, "\r\n\r\n.\r\nNOOP\r\n");
  client(body);
  strcpy(want, body); /* the NOOP pipelined after the dot too */
  CHECK_STR(toserver(), want);
  CHECK_STR(toclient(), "");
  server("250 queued\r\n250 ok\r\n");
  CHECK_STR(toclient(), "250 queued\r\n250 ok\r\n");
}

/* the end of data cut between two reads at every point */
static void data_end_every_split(void)
{
  const char *tail = "x\r\n.\r\nQUIT\r\n";
  size_t cut, len = strlen(tail);
  for (cut = 0; cut <= len; cut++) {
    cleared("250 mx\r\n");
    client("DATA\r\n");
    toserver();
    server("354 go\r\n");
    toclient();
    CHECK(client_n(tail, cut) == cut);
    CHECK(client_n(tail + cut, len - cut) == len - cut);
    CHECK_STR(toserver(), "x\r\n.\r\nQUIT\r\n");
    CHECK(e.qlen == 2 && e.content == SMTP_C_NONE);
  }
}

static void data_lookalike_ends(void)
{
  cleared("250 mx\r\n");
  client("DATA\r\n");
  toserver();
  server("354 go\r\n");
  toclient();
  client("a\n.\nb\r.\rc\r\n.x\r\n. \r\n..\r\nNOOP\r\n");
  CHECK_STR(toserver(), "a\n.\nb\r.\rc\r\n.x\r\n. \r\n..\r\nNOOP\r\n");
  CHECK(e.content == SMTP_C_DATA);
  client(".\r\n");
  CHECK_STR(toserver(), ".\r\n");
  CHECK(e.content == SMTP_C_NONE);
}

static void data_refused_then_commands(void)
{
  cleared("250 mx\r\n");
  client("DATA\r\nNOOP\r\n");
  CHECK_STR(toserver(), "DATA\r\n"); /* what follows waits for DATA's reply */
  server("554 no valid recipients\r\n");
  CHECK_STR(toserver(), "NOOP\r\n");
  server("250 ok\r\n");
  CHECK_STR(toclient(), "554 no valid recipients\r\n250 ok\r\n");
}

static void data_content_before_354(void)
{
  cleared("250 mx\r\n");
  client("DATA\r\nAUTH x\r\n.\r\n");
  CHECK_STR(toserver(), "DATA\r\n");
  server("354 go\r\n");
  CHECK_STR(toserver(), "AUTH x\r\n.\r\n");
}

static void data_client_eof_midway(void)
{
  cleared("250 mx\r\n");
  client("DATA\r\n");
  toserver();
  server("354 go\r\n");
  client("partial line");
  smtp_client_eof(&e);
  CHECK_STR(toserver(), "partial line");
  CHECK(smtp_server_done(&e));
}

static void bdat_forwarded(void)
{
  cleared("250-mx\r\n250 CHUNKING\r\n");
  client("BDAT 6\r\nNOOP\r\nBDAT 14 LAST\r\nQUIT\r\nAUTH x\r\nRSET\r\n");
  CHECK_STR(toserver(), "BDAT 6\r\nNOOP\r\nBDAT 14 LAST\r\nQUIT\r\nAUTH x\r\nRSET\r\n");
  server("250 a\r\n250 b\r\n250 c\r\n");
  CHECK_STR(toclient(), "250 a\r\n250 b\r\n250 c\r\n");
  CHECK(e.qlen == 0);
}

static void bdat_refused_consumed(void)
{
  greeted(0);
  client("EHLO c\r\n");
  toserver();
  server("250 mx\r\n");
  toclient();
  client("BDAT 6\r\nNOOP\r\n");
  CHECK_STR(toserver(), "");
  CHECK_STR(toclient(), "503 5.5.1 Bad sequence of commands: MAIL first\r\n");
  /* without CHUNKING offered, the smtpd would run the chunk */
  client("MAIL FROM:<a@b>\r\n");
  server("250 ok\r\n");
  toserver();
  client("BDAT 6\r\nNOOP\r\nBDAT 0 LAST\r\n");
  CHECK_STR(toserver(), "");
  CHECK_STR(toclient(), "250 ok\r\n500 5.5.1 Command unrecognized\r\n500 5.5.1 Command unrecognized\r\n");
}

static void bdat_huge_chunk(void)
{
  static char chunk[10000];
  int i;
  size_t total = 0;
  cleared("250-mx\r\n250 CHUNKING\r\n");
  client("BDAT 1000000 LAST\r\n");
  memset(chunk, '\n', sizeof chunk);
  CHECK_STR(toserver(), "BDAT 1000000 LAST\r\n");
  for (i = 0; i < 100; i++) {
    CHECK(client_n(chunk, sizeof chunk) == sizeof chunk);
    total += strlen(toserver());
  }
  CHECK(total == 1000000);
  client("QUIT\r\n");
  server("250 ok\r\n");
  CHECK_STR(toserver(), "QUIT\r\n");
}

static void long_mail_line(void)
{
  static char line[1100];
  greeted(0);
  strcpy(line, "MAIL FROM:<");
  memset(line + 11, 'a', 900);
  strcpy(line + 911, "@x> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=QQ314159 SMTPUTF8 AUTH=<>\r\n");
  CHECK(strlen(line) > 960);
  client(line);
  CHECK_STR(toserver(), line);
}

static void long_auth_line(void)
{
  static char line[12400];
  greeted(SMTP_PLAINAUTH);
  strcpy(line, "AUTH PLAIN ");
  memset(line + 11, 'A', 11987);
  strcpy(line + 11998, "\r\n");
  client(line);
  CHECK_STR(toserver(), line);
  greeted(0);
  client(line); /* not allowed, but still one reply */
  CHECK_STR(toclient(), "530 5.7.0 Must issue a STARTTLS command first\r\n");
  memset(line + 5, 'A', 12290);
  strcpy(line + 12295, "\r\n");
  client(line);
  CHECK_STR(toclient(), "500 5.5.2 Line too long\r\n");
}

static void extension_forwarded(void)
{
  greeted(0);
  client("ETRN @example.org\r\n");
  CHECK_STR(toserver(), "");
  CHECK_STR(toclient(), "500 5.5.1 Command unrecognized\r\n");
  client("EHLO c\r\n");
  toserver();
  server("250-mx\r\n250-ETRN\r\n250-ATRN example.org\r\n250 SIZE\r\n");
  toclient();
  client("ETRN @example.org\r\natrn example.org\r\n");
  CHECK_STR(toserver(), "ETRN @example.org\r\natrn example.org\r\n");
  CHECK(e.phase == SMTP_P_PLAIN); /* TLS still on offer */
  server("250 started\r\n250 ok\r\n");
  CHECK_STR(toclient(), "250 started\r\n250 ok\r\n");
  client("STARTTLS\r\n");
  CHECK_STR(toserver(), "RSET\r\n");
}

/* --- one reply per command, whatever happens --- */

/* replies the client does not read fill cout to just below the room of
 * the answer to STARTTLS: it must wait, not vanish */
static void starttls_answer_waits_for_room(void)
{
  static char big[SMTP_REPLYMAX], mid[171];
  int i;
  greeted(0);
  memset(big, 'h', sizeof big - 3);
  memcpy(big, "214 ", 4);
  memcpy(big + sizeof big - 3, "\r\n", 3);
  memset(mid, 'm', sizeof mid - 3);
  memcpy(mid, "214 ", 4);
  memcpy(mid + sizeof mid - 3, "\r\n", 3);
  for (i = 0; i < 3; i++) client("HELP\r\n");
  client("STARTTLS\r\n");
  toserver();
  for (i = 0; i < 2; i++) server(big);
  server(mid);
  server("250 flushed\r\n");
  {
    const char *p;
    size_t n = smtp_client_output(&e, &p), want = 2 * strlen(big) + strlen(mid);
    CHECK(n == want);
    CHECK(smtp_status(&e) == SMTP_RUN);
    smtp_client_sent(&e, n);
  }
  CHECK_STR(toclient(), "220 2.0.0 Ready to start TLS\r\n");
  CHECK(smtp_status(&e) == SMTP_STARTTLS);
}

static void rset_421_reaches_client(void)
{
  greeted(0);
  client("STARTTLS\r\n");
  CHECK_STR(toserver(), "RSET\r\n");
  server("421 4.3.2 shutting down\r\n");
  CHECK_STR(toclient(), "421 4.3.2 shutting down\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK(smtp_why(&e) == SMTP_WHY_SERVER421);
}

static void ehlo_cut_by_eof(void)
{
  greeted(0);
  client("EHLO c\r\n");
  toserver();
  server("250-mx\r\n250-SIZE\r\n250-8BITMIME\r\n");
  CHECK_STR(toclient(), "");
  smtp_server_eof(&e);
  CHECK_STR(toclient(), "421 4.3.0 Mail server unavailable, closing connection\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
}

static void smtpd_bytes_before_tls_dropped(void)
{
  greeted(0);
  client("STARTTLS\r\n");
  toserver();
  server("250 ok\r\n250 stray\r\n");
  CHECK_STR(toclient(), "220 2.0.0 Ready to start TLS\r\n");
  CHECK(smtp_tls_started(&e) == strlen("250 stray\r\n"));
  client("EHLO c\r\n");
  CHECK_STR(toserver(), "EHLO c\r\n");
  server("250 mx\r\n");
  CHECK_STR(toclient(), "250 mx\r\n");
}

static void smtpd_gone_after_mail(void)
{
  cleared("250 mx\r\n");
  client("RCPT TO:<c@d>\r\n");
  toserver();
  smtp_server_eof(&e);
  CHECK_STR(toclient(), "421 4.3.0 Mail server unavailable, closing connection\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK(smtp_exitcode(&e) == 1);
}

static void smtpd_gone_nothing_owed(void)
{
  greeted(0);
  smtp_server_eof(&e);
  CHECK_STR(toclient(), "421 4.3.0 Mail server unavailable, closing connection\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
  CHECK(smtp_exitcode(&e) == 0);
  cleared("250 mx\r\n");
  client("QUIT\r\n");
  server("221 bye\r\n");
  smtp_server_eof(&e);
  CHECK_STR(toclient(), "221 bye\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE);
}

static void smtpd_gone_mid_data(void)
{
  cleared("250 mx\r\n");
  client("DATA\r\n");
  server("354 go\r\n");
  client("some content\r\n");
  smtp_server_eof(&e);
  CHECK_STR(toclient(), "354 go\r\n421 4.3.0 Mail server unavailable, closing connection\r\n");
}

static void gone_421s_wait_for_room(void)
{
  static char big[SMTP_REPLYMAX];
  int i;
  size_t n;
  greeted(0);
  memset(big, 'h', sizeof big - 3);
  memcpy(big, "214 ", 4);
  memcpy(big + sizeof big - 3, "\r\n", 3);
  for (i = 0; i < 40; i++) client("HELP\r\n");
  toserver();
  for (i = 0; i < 2; i++) server(big);
  smtp_server_eof(&e);
  n = strlen(toclient());
  CHECK(n == 2 * strlen(big) + 38 * strlen("421 4.3.0 Mail server unavailable, closing connection\r\n"));
  CHECK(smtp_status(&e) == SMTP_CLOSE);
}

/* --- -L: the content guard --- */

/* a declined session under -L, past MAIL */
static void guarded(unsigned flags)
{
  greeted(SMTP_GUARD | flags);
  client("EHLO c\r\n");
  toserver();
  server("250-mx\r\n250 CHUNKING\r\n");
  toclient();
  client("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
  toserver();
  server("250 ok\r\n250 ok\r\n");
  CHECK_STR(toclient(), "250 ok\r\n250 ok\r\n");
}

static void in_data(void)
{
  client("DATA\r\n");
  CHECK_STR(toserver(), "DATA\r\n");
  server("354 go\r\n");
  CHECK_STR(toclient(), "354 go\r\n");
}

/* the public smuggling tools' end-of-data variants: the first byte that
 * makes each refused (at), and how the log names it */
static const struct { const char *seq; size_t len, at; const char *name, *reply; } smuggle[] = {
#define LF "550 5.5.2 Message refused: LF without CR in its content (RFC 5321 2.3.8)\r\n"
#define CR "550 5.5.2 Message refused: CR without LF in its content (RFC 5321 2.3.8)\r\n"
#define NUL "550 5.5.2 Message refused: NUL at the start of a line of its content\r\n"
  { "\n.\n", 3, 0, "<LF>.<LF>", LF },
  { "\n.\r\n", 4, 0, "<LF>.<CR><LF>", LF },
  { "\r\n.\n", 4, 3, "<CR><LF>.<LF>", LF },
  { "\r.\r", 3, 1, "<CR>.<CR>", CR },
  { "\r\n.\r", 4, 4, "<CR><LF>.<CR>", CR },
  { "\n.\r", 3, 0, "<LF>.<CR>", LF },
  { "\r.\n", 3, 1, "<CR>.<LF>", CR },
  { "\r.\r\n", 4, 1, "<CR>.<CR><LF>", CR },
  { "\n\n.\r\n", 5, 0, "<LF><LF>.<CR>", LF },
  { "\r\n\0.\r\n", 6, 2, "<CR><LF><NUL>.<CR><LF>", NUL },
  { "\r\n.\0\r\n", 6, 3, "<CR><LF>.<NUL><CR><LF>", NUL },
  { "\r\n\0.\r", 5, 2, "<CR><LF><NUL>.<CR>", NUL },
  { "\r\n\0.\n", 5, 2, "<CR><LF><NUL>.<LF>", NUL },
  { "\n\0.\n", 4, 0, "<LF><NUL>.<LF>", LF },
  { "\r\0.\r\n", 5, 1, "<CR><NUL>.<CR><LF>", CR }
#undef LF
#undef CR
#undef NUL
};

static const char second[] = "MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nspoofed\r\n.\r\n";

/* each sequence, cut between two reads at every point: the message is
 * refused, nothing from the sequence on reaches the smtpd, whose input
 * ends; the client gets the 550 and the 421 */
static void guard_every_split(void)
{
  static char body[200], got[400];
  size_t k, cut;
  for (k = 0; k < sizeof smuggle / sizeof smuggle[0]; k++) {
    size_t head = strlen("Subject: x\r\n\r\nfirst"), len;
    memcpy(body, "Subject: x\r\n\r\nfirst", head);
    memcpy(body + head, smuggle[k].seq, smuggle[k].len);
    memcpy(body + head + smuggle[k].len, second, sizeof second);
    len = head + smuggle[k].len + sizeof second - 1;
    for (cut = 0; cut <= len; cut++) {
      const char *name;
      guarded(0);
      in_data();
      CHECK(client_n(body, cut) == cut);
      strcpy(got, toserver());
      client_n(body + cut, len - cut);
      strcat(got, toserver());
      /* what the smtpd got is content before that byte, no more: what
       * came in a read before it, nothing of the read that brought it,
       * and not a CR that ended that read (the next byte could make it
       * a bare CR) */
      if (cut <= head + smuggle[k].at) {
        size_t want = cut && body[cut - 1] == '\r' ? cut - 1 : cut;
        CHECK(strlen(got) == want && !memcmp(got, body, want));
      }
      else CHECK_STR(got, "");
      CHECK(smtp_server_done(&e));
      strcpy(got, smuggle[k].reply);
      strcat(got, "421 4.5.2 Closing connection after a refused message\r\n");
      CHECK_STR(toclient(), got);
      CHECK(smtp_status(&e) == SMTP_CLOSE && smtp_why(&e) == SMTP_WHY_CONTENT && smtp_exitcode(&e) == 1);
      /* named in full unless the read ended inside it */
      name = smtp_badcontent(&e);
      CHECK(*name && !strncmp(smuggle[k].name, name, strlen(name)));
      if (cut <= head || cut >= head + smuggle[k].len) CHECK_STR(name, smuggle[k].name);
      if (check_bad) { printf("  sequence %u cut at %u\n", (unsigned)k, (unsigned)cut); return; }
    }
  }
}

/* the client is told, then the connection closes */
static void guard_reply_then_421(void)
{
  guarded(0);
  in_data();
  client("a\n.\nMAIL FROM:<x@y>\r\n");
  CHECK_STR(toserver(), "");
  CHECK(server_n("421 lost input\r\n", 16) == 0); /* closed: the smtpd is no longer read */
  smtp_server_eof(&e);
  CHECK_STR(toclient(), "550 5.5.2 Message refused: LF without CR in its content (RFC 5321 2.3.8)\r\n"
            "421 4.5.2 Closing connection after a refused message\r\n");
  CHECK(smtp_client_room(&e, &(char *){0}) == 0);
}

/* CRLF.CRLF still ends DATA under -L, at every split, and lookalike lines pass */
static void guard_standard_end(void)
{
  const char *body = "..\r\n.x\r\n. \r\n\r\n.\r\nNOOP\r\n";
  size_t cut, len = strlen(body);
  static char got[200];
  for (cut = 0; cut <= len; cut++) {
    guarded(0);
    in_data();
    CHECK(client_n(body, cut) == cut);
    strcpy(got, toserver());
    CHECK(client_n(body + cut, len - cut) == len - cut);
    strcat(got, toserver());
    CHECK_STR(got, body); /* the NOOP pipelined after the dot too */
    server("250 queued\r\n250 ok\r\n");
    CHECK_STR(toclient(), "250 queued\r\n250 ok\r\n");
    CHECK(e.qlen == 0 && e.content == SMTP_C_NONE && smtp_status(&e) == SMTP_RUN);
  }
}

/* BDAT is counted, not scanned: -L lets its chunks be */
static void guard_bdat_untouched(void)
{
  guarded(0);
  client("BDAT 11 LAST\r\na\n.\nb\r.\r\0.\r\nQUIT\r\n");
  CHECK_STR(toserver(), "BDAT 11 LAST\r\na\n.\nb\r.\r\0.");
}

/* After TLS the engine stays: AUTH's exchange passes, STARTTLS is refused,
 * DATA is guarded */
static void guard_after_tls(void)
{
  greeted(SMTP_GUARD);
  client("STARTTLS\r\n");
  CHECK_STR(toserver(), "RSET\r\n");
  server("250 ok\r\n");
  CHECK_STR(toclient(), "220 2.0.0 Ready to start TLS\r\n");
  smtp_tls_started(&e);
  client("EHLO c\r\n");
  CHECK_STR(toserver(), "EHLO c\r\n");
  server("250-mx\r\n250-AUTH LOGIN PLAIN\r\n250 STARTTLS\r\n");
  CHECK_STR(toclient(), "250-mx\r\n250 AUTH LOGIN PLAIN\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN && e.phase == SMTP_P_COMMANDS);
  client("AUTH LOGIN\r\ndXNlcg==\r\n");
  CHECK_STR(toserver(), "AUTH LOGIN\r\n");
  server("334 VXNlcm5hbWU6\r\n");
  CHECK_STR(toclient(), "334 VXNlcm5hbWU6\r\n");
  CHECK_STR(toserver(), "dXNlcg==\r\n");
  client("cGFzcw==\r\nNOOP\r\n");
  server("334 UGFzc3dvcmQ6\r\n");
  CHECK_STR(toserver(), "cGFzcw==\r\n");
  server("235 2.7.0 ok\r\n");
  CHECK_STR(toserver(), "NOOP\r\n");
  server("250 ok\r\n");
  CHECK_STR(toclient(), "334 UGFzc3dvcmQ6\r\n235 2.7.0 ok\r\n250 ok\r\n");
  client("STARTTLS\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
  CHECK_STR(toserver(), "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
  server("250 ok\r\n250 ok\r\n354 go\r\n");
  CHECK_STR(toclient(), "503 5.5.1 TLS is already active\r\n250 ok\r\n250 ok\r\n354 go\r\n");
  client("x\r\n.\n");
  CHECK_STR(toclient(), "550 5.5.2 Message refused: LF without CR in its content (RFC 5321 2.3.8)\r\n"
            "421 4.5.2 Closing connection after a refused message\r\n");
  CHECK_STR(smtp_badcontent(&e), "<CR><LF>.<LF>");
}

/* a client that reads nothing: the 550 waits for room, and the smtpd's
 * end meanwhile does not turn it into a 421 */
static void guard_refusal_waits_for_room(void)
{
  static char big[SMTP_REPLYMAX], mid[139];
  const char *p;
  size_t n;
  guarded(0);
  memset(big, 'h', sizeof big - 3);
  memcpy(big, "214 ", 4);
  memcpy(big + sizeof big - 3, "\r\n", 3);
  memset(mid, 'm', sizeof mid - 3);
  memcpy(mid, "250 ", 4);
  memcpy(mid + sizeof mid - 3, "\r\n", 3);
  client("HELP\r\nHELP\r\nNOOP\r\nDATA\r\n");
  toserver();
  server(big);
  server(big);
  server(mid);
  server("354 go\r\n");
  client("x\n.\nMAIL FROM:<e@f>\r\n");
  CHECK_STR(toserver(), "");
  CHECK(smtp_server_done(&e));
  smtp_server_eof(&e);
  n = smtp_client_output(&e, &p);
  CHECK(n == 2 * strlen(big) + strlen(mid) + 8);
  CHECK(smtp_status(&e) == SMTP_RUN);
  smtp_client_sent(&e, n);
  CHECK_STR(toclient(), "550 5.5.2 Message refused: LF without CR in its content (RFC 5321 2.3.8)\r\n"
            "421 4.5.2 Closing connection after a refused message\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE && smtp_why(&e) == SMTP_WHY_CONTENT);
}

/* -a -L: AUTH before TLS goes through the engine, which stays */
static void guard_plainauth(void)
{
  greeted(SMTP_GUARD | SMTP_PLAINAUTH);
  client("EHLO c\r\n");
  toserver();
  server("250-mx\r\n250 AUTH PLAIN\r\n");
  CHECK_STR(toclient(), "250-mx\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n");
  client("AUTH PLAIN\r\n");
  CHECK_STR(toserver(), "AUTH PLAIN\r\n");
  CHECK(e.phase == SMTP_P_COMMANDS);
  server("334 \r\n");
  /* a response with a bare CR, and one too long: each becomes "*" */
  client("AG\rFAYg==\r\n");
  CHECK_STR(toserver(), "*\r\n");
  server("501 5.0.0 cancelled\r\n");
  CHECK_STR(toclient(), "334 \r\n501 5.0.0 cancelled\r\n");
  client("AUTH PLAIN\r\n");
  toserver();
  server("334 \r\n");
  {
    static char big[SMTP_AUTHMAX + 100];
    memset(big, 'A', sizeof big - 1);
    client(big);
    client("\r\nNOOP\r\n");
  }
  CHECK_STR(toserver(), "*\r\n");
  server("501 5.0.0 cancelled\r\n");
  CHECK_STR(toserver(), "NOOP\r\n");
  server("250 ok\r\n");
  CHECK_STR(toclient(), "334 \r\n501 5.0.0 cancelled\r\n250 ok\r\n");
}

/* without -L the same bytes are content, passed on as they came */
static void guard_off_passes(void)
{
  size_t k;
  for (k = 0; k < sizeof smuggle / sizeof smuggle[0]; k++) {
    static char body[100];
    cleared("250 mx\r\n");
    client("RCPT TO:<c@d>\r\nDATA\r\n");
    toserver();
    server("250 ok\r\n354 go\r\n");
    toclient();
    memcpy(body, "first", 5);
    memcpy(body + 5, smuggle[k].seq, smuggle[k].len);
    CHECK(client_n(body, 5 + smuggle[k].len) == 5 + smuggle[k].len);
    CHECK(strlen(toserver()) <= 5 + smuggle[k].len && e.phase == SMTP_P_COMMANDS);
  }
}

/* --- issue 19: the engine frames what the smtpd frames --- */

/* A malformed BDAT: the chunk's end cannot be known, so neither it nor
 * anything after it may reach the smtpd: one 501, one 421, closed. */
static void bdat_malformed_closes(void)
{
  static const char *const bad[] = {
    "BDAT 33LAST", "BDAT 1 LASTX", "BDAT +5", "BDAT 5  LAST", "BDAT", "BDAT ", "BDAT 5 ",
    "BDAT 5 LAST ", "BDAT  5", "BDAT\t5", "BDAT -1", "BDAT 0x10"
  };
  size_t i;
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char line[200];
    cleared("250-mx\r\n250 CHUNKING\r\n");
    sprintf(line, "%s\r\nAUTH PLAIN AGFAYg==\r\nMAIL FROM:<e@x>\r\n", bad[i]);
    client(line);
    CHECK_STR(toserver(), "");
    CHECK_STR(toclient(), "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"
              "421 4.5.4 Cannot tell where that BDAT chunk ends, closing connection\r\n");
    CHECK(smtp_status(&e) == SMTP_CLOSE && smtp_why(&e) == SMTP_WHY_BDAT && smtp_exitcode(&e) == 1);
    CHECK(smtp_server_done(&e));
    if (check_bad) { printf("  with %s\n", bad[i]); return; }
  }
}

/* the grammar's own forms pass, LAST in any case */
static void bdat_grammar_passes(void)
{
  cleared("250-mx\r\n250 CHUNKING\r\n");
  client("bdat 2 last\r\nabBdAt 0 LaSt\r\nBDAT 007\r\nabcdefgNOOP\r\n");
  CHECK_STR(toserver(), "bdat 2 last\r\nabBdAt 0 LaSt\r\nBDAT 007\r\nabcdefgNOOP\r\n");
  CHECK(smtp_status(&e) == SMTP_RUN);
}

/* Sizes past the bound are refused, their chunk consumed unseen: what an
 * smtpd reading sizes modulo 2^32 (exim) would take for commands never
 * reaches it. */
static void bdat_size_bound(void)
{
  static const char *const big[] = {
    "2147483648", "4294967296", "4294967297", "18446744073709551615", "18446744073709551616",
    "99999999999999999999999999999999"
  };
  size_t i;
  for (i = 0; i < sizeof big / sizeof big[0]; i++) {
    char line[200];
    cleared("250-mx\r\n250 CHUNKING\r\n");
    sprintf(line, "BDAT %s LAST\r\nAUTH PLAIN AGFAYg==\r\nMAIL FROM:<e@x>\r\n", big[i]);
    client(line);
    CHECK_STR(toserver(), "");
    CHECK_STR(toclient(), "552 5.3.4 BDAT chunk over 2147483647 octets: refused\r\n");
    CHECK(smtp_status(&e) == SMTP_RUN);
    if (check_bad) { printf("  with %s\n", big[i]); return; }
  }
  cleared("250-mx\r\n250 CHUNKING\r\n");
  client("BDAT 2147483647 LAST\r\nAUTH PLAIN AGFAYg==\r\n");
  CHECK_STR(toserver(), "BDAT 2147483647 LAST\r\nAUTH PLAIN AGFAYg==\r\n");
}

/* -L: a CR that ends a read is held until the next byte shows it is no
 * bare CR; at the client's end it never goes. */
static void guard_trailing_cr(void)
{
  guarded(0);
  in_data();
  client("x\r\n.\r");
  CHECK_STR(toserver(), "x\r\n.");
  client("MAIL FROM:<e@x>\r\n");
  CHECK_STR(toserver(), "");
  CHECK(smtp_status(&e) == SMTP_CLOSE && smtp_why(&e) == SMTP_WHY_CONTENT);
  CHECK_STR(smtp_badcontent(&e), "<CR><LF>.<CR>");
  guarded(0);
  in_data();
  client("x\r");
  CHECK_STR(toserver(), "x");
  client("\n.\r");
  CHECK_STR(toserver(), "\r\n.");
  client("\nQUIT\r\n");
  CHECK_STR(toserver(), "\r\nQUIT\r\n");
  guarded(0);
  in_data();
  client("x\r\n.\r");
  CHECK_STR(toserver(), "x\r\n.");
  smtp_client_eof(&e);
  CHECK_STR(toserver(), "");
  CHECK(smtp_server_done(&e));
}

/* A reply that answers no command: the engine and the smtpd disagree on
 * where content ended. It never reaches the client: one 421, closed. */
static void stray_reply_in_data(void)
{
  cleared("250 mx\r\n");
  client("RCPT TO:<c@d>\r\nDATA\r\n");
  toserver();
  server("250 ok\r\n354 go\r\n");
  toclient();
  client("Subject: x\r\n\r\nhi\n.\nMAIL FROM:<e@x>\r\nRCPT TO:<f@y>\r\nDATA\r\nsmuggled\r\n.\r\n");
  toserver();
  server("250 2.0.0 queued as 1\r\n250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued as 2\r\n");
  CHECK_STR(toclient(), "250 2.0.0 queued as 1\r\n421 4.3.0 Mail server error, closing connection\r\n");
  CHECK(smtp_status(&e) == SMTP_CLOSE && smtp_why(&e) == SMTP_WHY_STRAY && smtp_exitcode(&e) == 1);
  CHECK_STR(smtp_stray(&e), "250 ok");
  CHECK(smtp_server_done(&e));
}

static void stray_reply_before_end(void)
{
  cleared("250 mx\r\n");
  client("RCPT TO:<c@d>\r\nDATA\r\n");
  toserver();
  server("250 ok\r\n354 go\r\n");
  toclient();
  client("hi\n.\nMAIL FROM:<e@x>\r\n");
  CHECK_STR(toserver(), "hi\n.\nMAIL FROM:<e@x>\r\n");
  server("250 2.0.0 queued\r\n");
  CHECK_STR(toclient(), "421 4.3.0 Mail server error, closing connection\r\n");
  CHECK(smtp_why(&e) == SMTP_WHY_STRAY);
  CHECK_STR(smtp_stray(&e), "250 2.0.0 queued");
  client_n("more\r\n.\r\n", 9);
  CHECK_STR(toserver(), "");
}

static void stray_reply_none_owed(void)
{
  greeted(0);
  server("250-what\r\n250 now\r\n");
  CHECK_STR(toclient(), "421 4.3.0 Mail server error, closing connection\r\n");
  CHECK(smtp_why(&e) == SMTP_WHY_STRAY);
  CHECK_STR(smtp_stray(&e), "250-what");
  /* the BDAT's reply, while its chunk is still passed on */
  cleared("250-mx\r\n250 CHUNKING\r\n");
  client("BDAT 10 LAST\r\nabc");
  CHECK_STR(toserver(), "BDAT 10 LAST\r\nabc");
  server("250 0 octets\r\n");
  CHECK_STR(toclient(), "421 4.3.0 Mail server error, closing connection\r\n");
  CHECK(smtp_why(&e) == SMTP_WHY_STRAY);
  /* the line is named in printable bytes only */
  greeted(0);
  server("250 a\033[2Jb\r\n");
  CHECK_STR(smtp_stray(&e), "250 a?[2Jb");
}

/* RFC 5321 4.5.3.2.6: the reply to the end of content is waited for 10
 * minutes; the engine says when that wait is on. */
static void final_reply_owed(void)
{
  cleared("250-mx\r\n250 CHUNKING\r\n");
  client("RCPT TO:<c@d>\r\nDATA\r\n");
  CHECK(!smtp_final_reply_owed(&e));
  toserver();
  server("250 ok\r\n354 go\r\n");
  toclient();
  client("x\r\n");
  CHECK(!smtp_final_reply_owed(&e));
  client(".\r\n");
  CHECK(smtp_final_reply_owed(&e));
  toserver();
  server("250 queued\r\n");
  CHECK(!smtp_final_reply_owed(&e));
  client("BDAT 3\r\nabcBDAT 3 LAST\r\nab");
  CHECK(!smtp_final_reply_owed(&e));
  client("c");
  CHECK(smtp_final_reply_owed(&e));
  toserver();
  server("250 3\r\n");
  CHECK(smtp_final_reply_owed(&e));
  server("250 queued\r\n");
  CHECK(!smtp_final_reply_owed(&e));
  CHECK_STR(toclient(), "250 queued\r\n250 3\r\n250 queued\r\n");
}

/* RFC 5321 4.1.4: NOOP, HELP, RSET, VRFY, EXPN need no EHLO: after TLS
 * they reach the smtpd before it; the rest waits for the EHLO. */
static void gate_passes_anytime_verbs(void)
{
  tls(0);
  client("VRFY x\r\nNOOP\r\nRSET\r\nHELP\r\nEXPN y\r\nMAIL FROM:<a@b>\r\n");
  CHECK_STR(toserver(), "VRFY x\r\nNOOP\r\nRSET\r\nHELP\r\nEXPN y\r\n");
  server("252 a\r\n250 b\r\n250 c\r\n214 d\r\n252 e\r\n");
  CHECK_STR(toclient(), "252 a\r\n250 b\r\n250 c\r\n214 d\r\n252 e\r\n503 5.5.1 Send EHLO first\r\n");
}

/* every verb the smtpd offered, however many */
static void extension_verbs_20(void)
{
  char reply[2000], cmds[1000];
  int i;
  greeted(0);
  client("EHLO c\r\n");
  toserver();
  strcpy(reply, "250-mx\r\n");
  cmds[0] = 0;
  for (i = 1; i <= 20; i++) {
    sprintf(reply + strlen(reply), "250%sVERB%02d-EXT ARG\r\n", i < 20 ? "-" : " ", i);
    sprintf(cmds + strlen(cmds), "verb%02d-ext x\r\n", i);
  }
  server(reply);
  toclient();
  client(cmds);
  CHECK_STR(toserver(), cmds);
  CHECK_STR(toclient(), "");
  client("VERB21-EXT\r\n");
  CHECK_STR(toserver(), "");
}

/* more keywords than the store holds: none of them is refused */
static void extension_verbs_overflow(void)
{
  static char reply[40000];
  int i;
  greeted(0);
  client("EHLO c\r\n");
  toserver();
  strcpy(reply, "250-mx\r\n");
  for (i = 1; i <= 400; i++)
    sprintf(reply + strlen(reply), "250%sKEYWORD-NUMBER-%04d\r\n", i < 400 ? "-" : " ", i);
  server(reply);
  toclient();
  client("KEYWORD-NUMBER-0399 x\r\nKEYWORD-NUMBER-0001\r\n");
  CHECK_STR(toserver(), "KEYWORD-NUMBER-0399 x\r\nKEYWORD-NUMBER-0001\r\n");
}

/* XCLIENT and XFORWARD are for a trusted proxy; REQUIRETLS needs TLS */
static void trusted_verbs_refused(void)
{
  const char *ehlo = "250-mx\r\n250-XCLIENT NAME ADDR\r\n250-XFORWARD NAME ADDR\r\n250-REQUIRETLS\r\n250 SIZE\r\n";
  greeted(0);
  client("EHLO c\r\n");
  toserver();
  server(ehlo);
  CHECK_STR(toclient(), "250-mx\r\n250-SIZE\r\n250 STARTTLS\r\n");
  client("XCLIENT ADDR=127.0.0.1\r\nxforward NAME=x\r\nMAIL FROM:<a@b> REQUIRETLS\r\n"
         "MAIL FROM:<a@b> SIZE=10 requiretls\r\nMAIL FROM:<a@b> SIZE=10\r\n");
  CHECK_STR(toserver(), "MAIL FROM:<a@b> SIZE=10\r\n");
  server("250 ok\r\n");
  CHECK_STR(toclient(), "550 5.7.0 XCLIENT and XFORWARD are only for a trusted proxy\r\n"
            "550 5.7.0 XCLIENT and XFORWARD are only for a trusted proxy\r\n"
            "530 5.7.10 REQUIRETLS needs TLS: issue STARTTLS first\r\n"
            "530 5.7.10 REQUIRETLS needs TLS: issue STARTTLS first\r\n250 ok\r\n");
  /* over TLS: REQUIRETLS is the smtpd's, XCLIENT never */
  tls(SMTP_GUARD);
  client("XCLIENT ADDR=127.0.0.1\r\nEHLO c\r\n");
  CHECK_STR(toserver(), "EHLO c\r\n");
  server(ehlo);
  CHECK_STR(toclient(), "550 5.7.0 XCLIENT and XFORWARD are only for a trusted proxy\r\n"
            "250-mx\r\n250-REQUIRETLS\r\n250 SIZE\r\n");
  client("XFORWARD ADDR=127.0.0.1\r\nMAIL FROM:<a@b> REQUIRETLS\r\n");
  CHECK_STR(toserver(), "MAIL FROM:<a@b> REQUIRETLS\r\n");
  /* without -L the relay takes over: the EHLO reply still hides them */
  tls(0);
  client("EHLO c\r\n");
  toserver();
  server(ehlo);
  CHECK_STR(toclient(), "250-mx\r\n250-REQUIRETLS\r\n250 SIZE\r\n");
  CHECK(smtp_status(&e) == SMTP_RELAY);
}

/* A line that begins with an HTTP method: a browser made to talk to port
 * 25. Nothing more reaches the smtpd, whatever the body holds. */
static void http_request_closes(void)
{
  static const char *const methods[] = {
    "GET", "POST", "PUT", "HEAD", "CONNECT", "OPTIONS", "DELETE", "PATCH", "TRACE", "post"
  };
  size_t i;
  for (i = 0; i < sizeof methods / sizeof methods[0]; i++) {
    char req[400];
    greeted(0);
    client("NOOP\r\n");
    CHECK_STR(toserver(), "NOOP\r\n");
    sprintf(req, "%s / HTTP/1.1\r\nHost: mx\r\nContent-Length: 80\r\n\r\n"
            "HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n", methods[i]);
    client_n(req, strlen(req));
    CHECK_STR(toserver(), "");
    CHECK_STR(toclient(), "421 4.7.0 HTTP request refused, closing connection\r\n");
    CHECK(smtp_status(&e) == SMTP_CLOSE && smtp_why(&e) == SMTP_WHY_HTTP && smtp_exitcode(&e) == 1);
    CHECK(smtp_server_done(&e));
    if (check_bad) { printf("  with %s\n", methods[i]); return; }
  }
  /* before the greeting, and after TLS */
  start(0);
  client("GET / HTTP/1.0\r\n\r\n");
  server_n("220 mx\r\n", 8);
  CHECK_STR(toclient(), "421 4.7.0 HTTP request refused, closing connection\r\n");
  tls(0);
  client("CONNECT mx:25 HTTP/1.1\r\nEHLO x\r\n");
  CHECK_STR(toserver(), "");
  CHECK(smtp_why(&e) == SMTP_WHY_HTTP);
  /* a word that only begins like one is a verb like others */
  greeted(0);
  client("GETX / HTTP/1.1\r\n");
  CHECK_STR(toclient(), "500 5.5.1 Command unrecognized\r\n");
}

/* unknown verbs count toward the error limit */
static void unknown_verbs_counted(void)
{
  int i;
  greeted(0);
  for (i = 0; i < SMTP_MAXERRORS; i++) client("FROB\r\n");
  {
    const char *s = toclient();
    CHECK(strstr(s, "421 4.7.0 Too many errors, closing connection\r\n") != 0);
  }
  CHECK(smtp_status(&e) == SMTP_CLOSE && smtp_why(&e) == SMTP_WHY_ERRORS);
}

int main(void)
{
  RUN(greeting_multiline);
  RUN(greeting_split_bytewise);
  RUN(bare_code_reply);
  RUN(garbage_reply_is_fatal);
  RUN(garbage_greeting_is_fatal);
  RUN(multiline_help_then_next);
  RUN(unsolicited_then_eof);
  RUN(long_reply_lines);
  RUN(overlong_reply_is_fatal);
  RUN(ehlo_single_line);
  RUN(ehlo_multi_line);
  RUN(ehlo_bare_domain_line);
  RUN(ehlo_5xx_untouched);
  RUN(ehlo_starttls_already);
  RUN(ehlo_auth_hidden);
  RUN(ehlo_auth_last_with_starttls);
  RUN(plainauth_allowed);
  RUN(helo_declines);
  RUN(mail_declines);
  RUN(plainauth_helo_relays);
  RUN(requiretls_policy);
  RUN(requiretls_hides_auth);
  RUN(local_replies);
  RUN(verbs_case_insensitive);
  RUN(local_never_overtakes);
  RUN(ehlo_noop_order);
  RUN(pipelined_20_rset);
  RUN(pipelined_150);
  RUN(pipelined_1000);
  RUN(queue_bounds_reading);
  RUN(overlong_line);
  RUN(line_limit_exact);
  RUN(huge_line_bounded);
  RUN(nul_bare_cr_lf);
  RUN(eight_bit_passes);
  RUN(too_many_errors);
  RUN(starttls_ok);
  RUN(starttls_rset_fails);
  RUN(starttls_injection);
  RUN(starttls_late_bytes);
  RUN(starttls_client_gone);
  RUN(gate_after_tls);
  RUN(tls_ehlo_single_line);
  RUN(tls_helo_relays);
  RUN(decision_pending_ehlo);
  RUN(decision_with_local_pending);
  RUN(helo_before_greeting);
  RUN(ehlo_before_greeting);
  RUN(client_halfclose);
  RUN(client_quit_halfclose);
  RUN(client_drops_after_greeting);
  RUN(client_eof_partial_line);
  RUN(server_eof_pending);
  RUN(server_never_started);
  RUN(timeout_421);
  RUN(timeout_mid_ehlo);
  RUN(auth_after_helo);
  RUN(auth_after_mail_rset);
  RUN(data_content_is_not_commands);
  RUN(data_end_every_split);
  RUN(data_lookalike_ends);
  RUN(data_refused_then_commands);
  RUN(data_content_before_354);
  RUN(data_client_eof_midway);
  RUN(bdat_forwarded);
  RUN(bdat_refused_consumed);
  RUN(bdat_huge_chunk);
  RUN(long_mail_line);
  RUN(long_auth_line);
  RUN(extension_forwarded);
  RUN(starttls_answer_waits_for_room);
  RUN(rset_421_reaches_client);
  RUN(ehlo_cut_by_eof);
  RUN(smtpd_bytes_before_tls_dropped);
  RUN(smtpd_gone_after_mail);
  RUN(smtpd_gone_nothing_owed);
  RUN(smtpd_gone_mid_data);
  RUN(gone_421s_wait_for_room);
  RUN(fresh_greeting_is_ours);
  RUN(fresh_greeting_refused);
  RUN(fresh_greeting_refused_ehlo_waiting);
  RUN(fresh_smtpd_gone_before_greeting);
  RUN(fresh_pipelined_starttls_refused);
  RUN(fresh_waits_for_earlier_replies);
  RUN(guard_every_split);
  RUN(guard_reply_then_421);
  RUN(guard_standard_end);
  RUN(guard_bdat_untouched);
  RUN(guard_after_tls);
  RUN(guard_refusal_waits_for_room);
  RUN(guard_plainauth);
  RUN(guard_off_passes);
  RUN(bdat_malformed_closes);
  RUN(bdat_grammar_passes);
  RUN(bdat_size_bound);
  RUN(guard_trailing_cr);
  RUN(stray_reply_in_data);
  RUN(stray_reply_before_end);
  RUN(stray_reply_none_owed);
  RUN(final_reply_owed);
  RUN(gate_passes_anytime_verbs);
  RUN(extension_verbs_20);
  RUN(extension_verbs_overflow);
  RUN(trusted_verbs_refused);
  RUN(http_request_closes);
  RUN(unknown_verbs_counted);
  RUN(notls_policy);
  RUN(notls_plainauth);
  RUN(notls_helo);
  return check_failures != 0;
}
