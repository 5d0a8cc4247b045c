/* log.h: the program's lines on stderr: one write(2) each, prefixed with
 * the program's name, the kind (fatal, warning, info) and the session's
 * tag; at verbosity 2, the one end line of a session. */
#ifndef LOG_H
#define LOG_H

#define PROG "smtpd-starttls-proxy-io"

/* 0: fatal lines only; 1 (default): warnings too; 2: info lines and the
 * end line. */
extern unsigned long log_verbosity;

/* Makes the tag every later line carries: "pid N ip A", N this process's
 * pid (the one the super-server knows), A the client's address from
 * TCPREMOTEIP or SSLREMOTEIP. */
void log_tag(void);

/* One line of kind at level (written if log_verbosity >= level), fmt as
 * fmt.h takes it. Fatal lines are level 0; fatal() in end.h also ends. */
void log_line(unsigned long level, const char *kind, const char *fmt, ...);
#define warn(...) log_line(1, "warning", __VA_ARGS__)
#define info(...) log_line(2, "info", __VA_ARGS__)

/* What the end line tells of the session besides how it ended. */
void log_session_start(void);            /* its length counts from now */
void log_session_tls(const char *protocol, const char *cipher);
void log_session_bytes(unsigned long long in, unsigned long long out); /* cleartext, added */

/* The end line (verbosity 2, once a session has started): "end: WHAT,
 * WHY, S s, I bytes in, O out, STATUS", STATUS being status as given
 * ("exit 0", "smtpd signal 15", ...). */
void log_end(const char *why, const char *status);

#endif
