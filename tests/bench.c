/* bench.c: the benchmark driver behind make bench. It plays the client
 * and a minimal UCSPI-TLS server at once, with no network and no TLS:
 * the client connection is a socketpair, the control socket another, the
 * TLS engine's two pipes are plain pipes. On STARTTLS it answers 'Y' with
 * a small environment block, closes the control socket (as s6-ucspitlsd
 * does) and from then on talks in clear through the two pipes, which is
 * what a TLS engine copying without encryption would deliver: the figures
 * are the proxy's own cost, not TLS's.
 *
 *   bench [-n sessions] [-r runs] [-m bulk_mib] sink name=prog[,arg...]...
 *
 * The contender named "floor" is the client talking straight to the sink.
 * Runs are interleaved (every contender once per run), and within a run
 * the contenders take turns session by session, in an order shuffled
 * afresh for each round, so that a change in the machine's load falls on
 * all of them alike; each figure is the median of the runs. CPU time and
 * page faults are each session's own, from getrusage(RUSAGE_CHILDREN)
 * before and after it. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXC 12
#define MAXRUNS 99
#define NSCEN 4

/* bulk: one big message in plaintext, through the SMTP engine; bulk-tls:
 * the same after STARTTLS, through the relay */
static const char *scenname[NSCEN] = { "plaintext", "starttls", "bulk", "bulk-tls" };
#define BULK(s) ((s) >= 2)
#define TLS(s) ((s) == 1 || (s) == 3)

struct contender {
  const char *name;
  char *argv[8];
  int floor;
  int fresh;                       /* -e: the sinks are the spawned process's children */
  long size;                       /* bytes of the program file, -1 if unknown */
  double wall[NSCEN][MAXRUNS];     /* seconds for the whole batch */
  double cpu[NSCEN][MAXRUNS];      /* user+sys seconds of the session's processes */
  double rss[NSCEN][MAXRUNS];      /* KiB, the proxy's peak in the batch's last session */
  double flt[NSCEN][MAXRUNS];      /* minor page faults of the session's processes */
};

static struct contender cont[MAXC];

/* The medians of a contender's runs in one scenario, computed once. */
struct medians {
  double wall, cpu, rss, flt; /* whole batch: seconds, seconds; KiB; faults */
};
static struct medians med[NSCEN][MAXC];
static int ncont;
static long nsessions = 1000, nruns = 5, bulkmib = 1024;
static const char *sink;
static int report_r = -1, report_w = -1;

static void die(const char *what)
{
  fprintf(stderr, "bench: fatal: %s: %s\n", what, strerror(errno));
  exit(111);
}

static void fail(const char *what)
{
  fprintf(stderr, "bench: fatal: %s\n", what);
  exit(1);
}

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The CPU seconds and minor page faults of every child reaped so far. */
static double children_cpu(double *faults)
{
  struct rusage ru;
  getrusage(RUSAGE_CHILDREN, &ru);
  *faults = (double)ru.ru_minflt;
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* One side of a conversation: where the client writes and reads. */
struct conn {
  int r, w;
  char buf[4096];
  size_t pos, len;
};

static void put(struct conn *c, const char *s, size_t n)
{
  while (n) {
    ssize_t k = write(c->w, s, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      die("write to the proxy");
    }
    s += k;
    n -= (size_t)k;
  }
}

static void say(struct conn *c, const char *s) { put(c, s, strlen(s)); }

/* Reads one whole reply, multi-line or not, and returns its code. */
static int reply(struct conn *c)
{
  for (;;) {
    char *lf = memchr(c->buf + c->pos, '\n', c->len - c->pos);
    if (lf) {
      char *line = c->buf + c->pos;
      c->pos = (size_t)(lf + 1 - c->buf);
      if (lf - line >= 3 && line[3] != '-') return atoi(line);
      continue;
    }
    if (c->pos) {
      memmove(c->buf, c->buf + c->pos, c->len - c->pos);
      c->len -= c->pos;
      c->pos = 0;
    }
    if (c->len == sizeof c->buf) fail("reply line too long");
    {
      ssize_t k = read(c->r, c->buf + c->len, sizeof c->buf - c->len);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) die("read from the proxy");
      if (k == 0) fail("the proxy closed the connection before a reply");
      c->len += (size_t)k;
    }
  }
}

static void expect(struct conn *c, const char *cmd, int code)
{
  int got;
  if (cmd) say(c, cmd);
  got = reply(c);
  if (got != code) {
    fprintf(stderr, "bench: fatal: %s got %d, not %d\n", cmd ? cmd : "greeting", got, code);
    exit(1);
  }
}

/* A body of lines of 1022 'x' and CRLF, written 64 KiB at a time. */
static char chunk[65536];

static void body(struct conn *c, long long bytes)
{
  while (bytes > 0) {
    size_t n = bytes < (long long)sizeof chunk ? (size_t)bytes : sizeof chunk;
    put(c, chunk, n);
    bytes -= (long long)n;
  }
  say(c, ".\r\n");
}

/* Moves fd to target in a child about to exec, wherever both were. */
static void place(int *fds, const int *targets, int n)
{
  int i;
  for (i = 0; i < n; i++) {
    fds[i] = fcntl(fds[i], F_DUPFD, 20);
    if (fds[i] < 0) _exit(111);
  }
  for (i = 0; i < n; i++)
    if (dup2(fds[i], targets[i]) < 0) _exit(111);
  for (i = 0; i < n; i++) close(fds[i]);
}

/* The high-water RSS in KiB of pid's children (the proxy, whose parent
 * became the sink), from Linux's /proc; -1 without it. The ru_maxrss the
 * sink reports is only the fallback: on Linux 6.18 it read 0 for the static
 * build whose VmHWM was 108 KiB (RSS is counted in per-CPU batches). */
static long children_hwm(pid_t pid)
{
  char path[64], line[256];
  long kid, max = -1, kib;
  FILE *kids, *st;
  snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", (long)pid, (long)pid);
  if (!(kids = fopen(path, "r"))) return -1;
  while (fscanf(kids, "%ld", &kid) == 1) {
    snprintf(path, sizeof path, "/proc/%ld/status", kid);
    if (!(st = fopen(path, "r"))) continue;
    while (fgets(line, sizeof line, st))
      if (sscanf(line, "VmHWM: %ld", &kib) == 1 && kib > max) max = kib;
    fclose(st);
  }
  fclose(kids);
  return max;
}

/* Runs one session; returns the proxy's peak RSS in KiB when sample is
 * set (read just before QUIT, when the relay has done its work), else 0. */
static long session(struct contender *k, int scen, int sample)
{
  int cs[2], ctl[2], tr[2], tw[2], status;
  struct conn c;
  pid_t pid;
  char rep[128], *line;
  long rss = 0, reppid = 0, hwm = -1;
  ssize_t n;

  if (socketpair(AF_UNIX, SOCK_STREAM, 0, cs) < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, ctl) < 0 ||
      pipe(tr) < 0 || pipe(tw) < 0)
    die("socketpair or pipe");
  pid = fork();
  if (pid < 0) die("fork");
  if (!pid) {
    int fds[7] = { cs[1], cs[1], ctl[1], tr[0], tw[1], report_w, -1 };
    static const int targets[6] = { 0, 1, 3, 4, 5, 9 };
    close(cs[0]);
    close(ctl[0]);
    close(tr[1]);
    close(tw[0]);
    close(report_r);
    place(fds, targets, 6);
    execvp(k->argv[0], k->argv);
    _exit(127);
  }
  close(cs[1]);
  close(ctl[1]);
  close(tr[0]);
  close(tw[1]);
  c.r = c.w = cs[0];
  c.pos = c.len = 0;

  expect(&c, NULL, 220);
  expect(&c, "EHLO bench\r\n", 250);
  if (TLS(scen) && !k->floor) {
    char cmd;
    static const char block[] = "SSL_PROTOCOL=TLSv1.3\0SSL_CIPHER=TLS_AES_128_GCM_SHA256\0";
    expect(&c, "STARTTLS\r\n", 220);
    if (read(ctl[0], &cmd, 1) != 1 || (cmd != 'Y' && cmd != 'y')) fail("no command on the control socket");
    if (cmd == 'Y' && write(ctl[0], block, sizeof block) != (ssize_t)sizeof block)
      die("write the environment block");
    close(ctl[0]);
    ctl[0] = -1;
    c.r = tw[0];
    c.w = tr[1];
    c.pos = c.len = 0;
  }
  if (TLS(scen)) expect(&c, "EHLO bench\r\n", 250);
  if (ctl[0] >= 0) close(ctl[0]);
  expect(&c, "MAIL FROM:<a@bench.test>\r\n", 250);
  expect(&c, "RCPT TO:<b@bench.test>\r\n", 250);
  expect(&c, "DATA\r\n", 354);
  body(&c, BULK(scen) ? (long long)bulkmib << 20 : 1024);
  expect(&c, NULL, 250);
  if (sample) hwm = children_hwm(pid);
  expect(&c, "QUIT\r\n", 221);
  close(cs[0]);
  close(tr[1]);
  close(tw[0]);

  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) die("waitpid");
  if (!WIFEXITED(status) || WEXITSTATUS(status)) {
    fprintf(stderr, "bench: fatal: %s: the session's process ended with status %d\n", k->name, status);
    exit(1);
  }
  /* one report per sink: with -e, two, from the proxy's children */
  n = read(report_r, rep, sizeof rep - 1);
  for (line = rep, rep[n > 0 ? n : 0] = 0; *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : "") {
    long p, r;
    if (sscanf(line, "%ld %ld", &p, &r) == 2 && (p == (long)pid || k->fresh)) { reppid = pid; rss = r; }
  }
  if (reppid != (long)pid) fail("the sink did not report, or is not the process the driver spawned");
  if (!sample || k->floor) return 0;
  return hwm >= 0 ? hwm : rss;
}

/* One session, its wall and CPU time and faults added to the run's. */
static void timed(struct contender *k, int scen, int run, int sample)
{
  double t0, c0, f0, f1;
  long rss;
  c0 = children_cpu(&f0);
  t0 = now();
  rss = session(k, scen, sample);
  k->wall[scen][run] += now() - t0;
  k->cpu[scen][run] += children_cpu(&f1) - c0;
  k->flt[scen][run] += f1 - f0;
  if ((double)rss > k->rss[scen][run]) k->rss[scen][run] = (double)rss;
}

/* A scenario's run: nsessions rounds, each contender once a round, in an
 * order shuffled for each round (a fixed-seed LCG: the same order every
 * time the bench runs), so that no contender keeps following another. */
static void batch(int scen, int run)
{
  static unsigned long seed = 1;
  int order[MAXC], i, j, t;
  long round, n = BULK(scen) ? 1 : nsessions;
  for (i = 0; i < ncont; i++) order[i] = i;
  for (round = 0; round < n; round++) {
    for (i = ncont - 1; i > 0; i--) {
      seed = (seed * 1103515245UL + 12345UL) & 0x7fffffffUL;
      j = (int)((seed >> 16) % (unsigned long)(i + 1));
      t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
    for (i = 0; i < ncont; i++) timed(&cont[order[i]], scen, run, round == n - 1);
  }
}

static int cmpd(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(const double *v, int n)
{
  double s[MAXRUNS];
  memcpy(s, v, (size_t)n * sizeof *s);
  qsort(s, (size_t)n, sizeof *s, cmpd);
  return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void figure(const char *scen, const char *who, const char *what, double v, const char *unit)
{
  printf("bench: %s.%s.%s %.*f %s\n", scen, who, what, v < 100 ? 2 : 0, v, unit);
}

static void contender(char *spec)
{
  struct contender *k;
  char *eq = strchr(spec, '='), *p;
  int i = 0;
  struct stat st;
  if (ncont == MAXC) fail("too many contenders");
  k = &cont[ncont++];
  if (!eq) fail("contender is not name=prog[,arg...]");
  *eq = 0;
  k->name = spec;
  k->floor = !strcmp(spec, "floor");
  if (!k->floor)
    for (p = strtok(eq + 1, ","); p && i < 6; p = strtok(NULL, ",")) k->argv[i++] = p;
  k->fresh = i > 1 && !strcmp(k->argv[i - 1], "-e");
  k->argv[i++] = (char *)sink;
  k->argv[i] = NULL;
  k->size = !k->floor && strchr(k->argv[0], '/') && !stat(k->argv[0], &st) ? (long)st.st_size : -1;
}

int main(int argc, char **argv)
{
  int opt, run, s, i, rp[2];
  int f = -1, o = -1; /* the floor's and the other program's index, if any */

  while ((opt = getopt(argc, argv, "n:r:m:")) != -1) {
    switch (opt) {
    case 'n': nsessions = atol(optarg); break;
    case 'r': nruns = atol(optarg); break;
    case 'm': bulkmib = atol(optarg); break;
    default: goto usage;
    }
  }
  if (argc - optind < 2 || nsessions < 1 || nruns < 1 || nruns > MAXRUNS || bulkmib < 1) goto usage;
  sink = argv[optind++];
  for (; optind < argc; optind++) contender(argv[optind]);
  for (i = 0; i < ncont; i++)
    if (cont[i].floor) f = i;
    else if (!strcmp(cont[i].name, "other")) o = i;

  for (i = 0; i < (int)sizeof chunk; i += 1024) {
    memset(chunk + i, 'x', 1022);
    memcpy(chunk + i + 1022, "\r\n", 2);
  }
  signal(SIGPIPE, SIG_IGN);
  if (pipe(rp) < 0) die("pipe");
  report_r = rp[0];
  report_w = rp[1];
  if (fcntl(report_r, F_SETFL, O_NONBLOCK) < 0) die("fcntl");
  if (setenv("SSLCTLFD", "3", 1) || setenv("SSLREADFD", "4", 1) || setenv("SSLWRITEFD", "5", 1))
    die("setenv");

  for (run = 0; run < nruns; run++) {
    fprintf(stderr, "bench: run %d of %ld\n", run + 1, nruns);
    for (s = 0; s < NSCEN; s++) batch(s, run);
  }

  for (s = 0; s < NSCEN; s++)
    for (i = 0; i < ncont; i++) {
      med[s][i].wall = median(cont[i].wall[s], (int)nruns);
      med[s][i].cpu = median(cont[i].cpu[s], (int)nruns);
      med[s][i].rss = median(cont[i].rss[s], (int)nruns);
      med[s][i].flt = median(cont[i].flt[s], (int)nruns);
    }

  printf("%ld sessions per batch, bulk %ld MiB, median of %ld interleaved runs\n\n",
         nsessions, bulkmib, nruns);
  printf("%-10s %-16s %12s %12s %12s %12s %12s %10s\n", "scenario", "contender",
         "sessions/s", "wall us", "cpu us", "added cpu us", "added faults", "rss KiB");
  for (s = 0; s < NSCEN; s++) {
    double fcpu = f >= 0 ? med[s][f].cpu : 0, n = BULK(s) ? 1 : (double)nsessions;
    double fflt = f >= 0 ? med[s][f].flt : 0;
    for (i = 0; i < ncont; i++) {
      const struct medians *m = &med[s][i];
      char rss[24] = "-";
      if (!cont[i].floor) snprintf(rss, sizeof rss, "%.0f", m->rss);
      if (BULK(s))
        printf("%-10s %-16s %9.0f MiB/s %9.0f ms %9.0f ms %9.0f ms %12.0f %10s\n", scenname[s], cont[i].name,
               (double)bulkmib / m->wall, m->wall * 1e3, m->cpu * 1e3, (m->cpu - fcpu) * 1e3, m->flt - fflt, rss);
      else
        printf("%-10s %-16s %12.0f %12.0f %12.0f %12.0f %12.1f %10s\n", scenname[s], cont[i].name,
               n / m->wall, m->wall / n * 1e6, m->cpu / n * 1e6, (m->cpu - fcpu) / n * 1e6,
               (m->flt - fflt) / n, rss);
    }
  }
  printf("\n");
  for (i = 0; i < ncont; i++) {
    /* the engine's content path against the relay's portable copy path */
    int j;
    if (strcmp(cont[i].name, "default") && strcmp(cont[i].name, "copy") && strcmp(cont[i].name, "L")) continue;
    for (j = 0; j < ncont; j++) {
      if (strcmp(cont[j].name, "copy")) continue;
      printf("bulk: %s through the engine (plaintext) moves %.0f%% of what copy's relay moves (bulk-tls)\n",
             cont[i].name, 100 * med[3][j].wall / med[2][i].wall);
      /* -L keeps the engine after STARTTLS: its bulk-tls is the engine's too */
      if (!strcmp(cont[i].name, "L"))
        printf("bulk-tls: L through the engine moves %.0f%% of what copy's relay moves (bulk-tls)\n",
               100 * med[3][j].wall / med[3][i].wall);
    }
  }
  if (f >= 0 && o >= 0)
    for (s = 0; s < 2; s++)
      for (i = 0; i < ncont; i++)
        if (i != o && i != f)
          printf("%s: %s adds %.0f%% of the CPU that %s adds, %.0f%% of its page faults\n", scenname[s],
                 cont[i].name, 100 * (med[s][i].cpu - med[s][f].cpu) / (med[s][o].cpu - med[s][f].cpu),
                 cont[o].name, 100 * (med[s][i].flt - med[s][f].flt) / (med[s][o].flt - med[s][f].flt));
  for (i = 0; i < ncont; i++)
    if (cont[i].size >= 0 && (!i || strcmp(cont[i].argv[0], cont[i - 1].argv[0])))
      printf("size of %s: %ld bytes\n", cont[i].argv[0], cont[i].size);
  printf("\n");
  for (s = 0; s < NSCEN; s++) {
    double n = BULK(s) ? 1 : (double)nsessions;
    for (i = 0; i < ncont; i++) {
      const struct medians *m = &med[s][i];
      const char *who = cont[i].name;
      if (BULK(s)) {
        figure(scenname[s], who, "throughput", (double)bulkmib / m->wall, "MiB/s");
        if (f >= 0 && i != f) figure(scenname[s], who, "of_floor", 100 * med[s][f].wall / m->wall, "%");
      } else {
        figure(scenname[s], who, "rate", n / m->wall, "sessions/s");
        figure(scenname[s], who, "cpu", m->cpu / n * 1e6, "us/session");
        if (f >= 0 && i != f)
          figure(scenname[s], who, "added_cpu", (m->cpu - med[s][f].cpu) / n * 1e6, "us/session");
        figure(scenname[s], who, "faults", m->flt / n, "/session");
        if (f >= 0 && i != f)
          figure(scenname[s], who, "added_faults", (m->flt - med[s][f].flt) / n, "/session");
        if (f >= 0 && o >= 0 && i != o && i != f)
          figure(scenname[s], who, "added_cpu_of_other",
                 100 * (m->cpu - med[s][f].cpu) / (med[s][o].cpu - med[s][f].cpu), "%");
      }
      if (i != f) figure(scenname[s], who, "peak_rss", m->rss, "KiB");
    }
  }
  for (i = 0; i < ncont; i++)
    if (cont[i].size >= 0) figure("binary", cont[i].name, "size", (double)cont[i].size, "bytes");
  return 0;

usage:
  fprintf(stderr, "usage: bench [-n sessions] [-r runs] [-m bulk_mib] sink name=prog[,arg...]...\n");
  return 100;
}
