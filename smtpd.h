/* smtpd.h: the smtpd's process: its environment and descriptors, starting
 * it (and with -e a second one after TLS), its pipes, and waiting for it
 * and passing its status on.
 *
 * By default the smtpd is the process the super-server started: it forks,
 * the parent becomes the smtpd and the child serves the session. With -e
 * the process the super-server started serves the session, and each
 * smtpd is its child. */
#ifndef SMTPD_H
#define SMTPD_H

#include <stddef.h>
#include <sys/types.h>
#include "ucspitls.h"

/* Closes the copies of the client connection found beside fds 0 and 1
 * (sslserver leaves one), so that neither the smtpd nor the relay holds
 * the raw connection; keep are the UCSPI-TLS descriptors, left alone. */
void smtpd_strays(int keep1, int keep2, int keep3);

/* The smtpd's environment: ours without what it must not learn (secret()),
 * and with b (-e, after TLS) the block's entries applied. */
char **smtpd_environ(const struct ucspitls_block *b);

/* Makes the smtpd's pipes and forks: argv runs with env in the parent
 * (child 0: the default layout) or in the child (child 1: -e). Returns in
 * the process that serves the session. */
void smtpd_start(char **argv, char **env, int child);

/* Our ends of its pipes: its standard input and output (-1: closed). */
int smtpd_in(void);
int smtpd_out(void);

/* The smtpd gets EOF: its input is closed (once; no-op if it is). */
void smtpd_close_input(void);
/* Its input goes to the relay, which closes it: returns it and forgets it. */
int smtpd_give_input(void);
/* This process is done with the smtpd's pipes (s6-ioconnect has them). */
void smtpd_close_pipes(void);

/* Reads and discards its output until EOF or deadline (one already past:
 * what is there). Signals are reacted to meanwhile (later SIGTERMs go on
 * to the smtpd) but do not stop it: an smtpd that writes as it ends must
 * not die of a closed pipe. Returns how many bytes. */
size_t smtpd_discard(long long deadline);

/* Whether its exec failed (the failed child said so, and logged it). */
int smtpd_exec_failed(void);

/* -e, after TLS: the smtpd that greeted is sent QUIT and EOF, and a new
 * one starts with the block's variables. */
void smtpd_renew(const struct ucspitls_block *b, char **argv);

/* A SIGTERM for the smtpd serving now, whichever process's child it is. */
void smtpd_term(void);

/* -e: waits until the smtpd, the first one (sent SIGTERM, then SIGKILL a
 * second later, if it lingers) and relay (a pid; 0: none) have ended.
 * Returns the smtpd's wait status, or -1 if none was started. */
int smtpd_wait(pid_t relay);

/* Ends this process as status says the smtpd ended: the same exit code,
 * or the same signal (without a core file). */
void smtpd_exit_as(int status);

#endif
