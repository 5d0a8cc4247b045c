/* libFuzzer target: drives the SMTP engine with interleaved client and
 * server bytes and events, and checks its invariants after every step.
 *
 * Input: one byte of flags, then records [op][len][len bytes of data]:
 * op % 4 == 0 client bytes, 1 smtpd bytes, 2 take up to len bytes of each
 * output (0: all), 3 an event chosen by len % 4: client EOF, smtpd EOF,
 * timeout, handshake done (when the engine asked for one). */
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

int LLVMFuzzerTestOneInput(const unsigned char *d, size_t n)
{
  unsigned long long fed = 0, sent = 0, rsets = 0;
  int linestart = 1;
  size_t i = 1;
  if (!n) return 0;
  smtp_init(&e, d[0] & 3);
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
        int waiting = e.phase == SMTP_P_TLSWAIT;
        memcpy(p, data, room);
        smtp_client_input(&e, room);
        if (!waiting) fed += room;
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
    /* from the 220 on, the client is not read until the handshake is done */
    if (before == SMTP_STARTTLS && smtp_status(&e) == SMTP_STARTTLS)
      invariant(smtp_client_room(&e, &p) == 0);
    if (smtp_status(&e) == SMTP_RELAY) return 0; /* the engine's part is over */
    check(fed, sent, rsets);
  }
  return 0;
}
