/* ucspitls.h: the application's side of UCSPI-TLS: the three descriptors
 * named in the environment, the command byte, the environment block. */
#ifndef UCSPITLS_H
#define UCSPITLS_H

#include <stddef.h>

#define UCSPITLS_BLOCKMAX (1024UL * 1024) /* sslserver's block carries PEM certificates */
#define UCSPITLS_KEEPMAX (64UL * 1024)    /* of it, what -e hands the smtpd */

/* Reads variable name as a descriptor. Returns 0 and sets *fd, or -1 and
 * sets *problem to a phrase for the log line ("is not set", ...). */
int ucspitls_fd(const char *name, int *fd, const char **problem);

/* Streaming parser of the environment block: NAME=value\0 entries, NAME\0
 * meaning "unset NAME", ended by \0\0. Keeps only what the log needs, so
 * its size does not depend on the block's. */
struct ucspitls_block {
  int done;               /* the terminating \0\0 was seen */
  int prevnul;
  int invalue;
  int target;             /* which kept variable the entry sets, or -1 */
  unsigned long total;
  size_t namelen, vallen;
  char name[32];
  char protocol[64];      /* SSL_PROTOCOL */
  char cipher[128];       /* SSL_CIPHER */
  char *keep;             /* if set: the entries as they came, each NUL-terminated */
  size_t keepcap, kept;
  int over;               /* the entries did not fit in keepcap: none is kept */
};

void ucspitls_block_init(struct ucspitls_block *b);
/* Parses up to n bytes; returns how many it used: fewer than n only when
 * the block ended inside them. */
size_t ucspitls_block_feed(struct ucspitls_block *b, const char *s, size_t n);

/* Makes the parser keep the block's entries in buf (cap bytes), for
 * ucspitls_env(); call after ucspitls_block_init(). */
void ucspitls_block_keep(struct ucspitls_block *b, char *buf, size_t cap);

/* Applies the kept entries to env, a null-terminated array of n NAME=value
 * strings with room for max pointers in all, in the block's order: NAME=value
 * replaces NAME or is added, NAME alone removes it. Entries for which skip()
 * is true are ignored (skip may be null). The strings added point into the
 * keep buffer. Returns the new n, or -1 if max was too small (env is then
 * as it was). A block that was over its keep cap changes nothing. */
long ucspitls_env(const struct ucspitls_block *b, char **env, size_t n, size_t max,
                  int (*skip)(const char *));

enum ucspitls_result {
  UCSPITLS_OK,        /* handshake done, block read */
  UCSPITLS_FAILED,    /* control socket closed with nothing sent: handshake failed */
  UCSPITLS_GONE,      /* the control socket was closed before 'Y': no TLS server */
  UCSPITLS_TIMEOUT,
  UCSPITLS_STOPPED,   /* io_signalled() said the session is to end */
  UCSPITLS_TOOBIG,    /* block over UCSPITLS_BLOCKMAX */
  UCSPITLS_ERROR      /* a system call failed: errno says why */
};

/* Sends 'Y' on ctl and reads the block into b (made ready by
 * ucspitls_block_init(), and ucspitls_block_keep() if wanted), never waiting for EOF
 * (sslserver keeps the socket open). onebyte: ctl is also the TLS read fd,
 * so not one byte past the block may be read. The wait keeps the signal
 * watch (io.h). Does not close ctl. */
enum ucspitls_result ucspitls_start(int ctl, int onebyte, long long deadline,
                                    struct ucspitls_block *b);

#endif
