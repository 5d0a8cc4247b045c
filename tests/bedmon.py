#!/usr/bin/env python3
"""The eyes of the test bed on a real super-server (Linux, ptrace).

  bedmon.py FIFO LOG

A real s6-tcpserver or sslserver logs nothing a test can use about the
application it ran: not its pid in a form that survives concurrency, and
sslserver not its exit status at all (it SIGTERMs the application and
exits without waiting). So the chain runs the application through
bedmon.WRAP, a shell line that writes its pid to FIFO, stops itself, and
execs the application once resumed. This process attaches to it with
PTRACE_SEIZE (the application keeps its pid, its parent and every
descriptor: nothing sits between it and the super-server), resumes it and
writes to LOG, one line per event, as the emulator does:

  cN app-pid P                   the Nth application, in the order seen
  cN client-socket INODE         what its fd 0 is when it starts
  cN exec NAME fd0=FLAGS fd1=FLAGS   the application execs NAME (the first
                                 one is the application itself, then the
                                 smtpd, s6-applyuidgid's target...)
  cN kid-exec NAME fd0=FLAGS fd1=FLAGS   a process the application forked
                                 (at any depth) execs NAME: -S's s6-ioconnect
                                 from the proxy's process, -e's smtpds; each
                                 is left untraced from then on. One that
                                 never execs (the proxy's own process without
                                 -S) stays traced to its end: its signals
                                 pass through here as the application's do.
                                 Run as root (CAP_SYS_PTRACE), a traced exec
                                 of a set-uid program (exim) keeps its rights.
  cN engine-exec NAME fd0=FLAGS  (s6) s6-ucspitlsd's child execs the TLS
                                 engine: the proxy has just sent y or Y
  cN app-end fd0=FLAGS fd1=FLAGS   the application is exiting, descriptors
                                 still open
  cN app-exit code=N|signal=N

FLAGS are "-" (fd closed) or KIND:blocking or KIND:nonblocking (KIND
socket, pipe or file): O_NONBLOCK of the open file description, read from /proc/P/fdinfo at the moment the tracee
stops. Signals are delivered as they come; the application is stopped
only for the instants those reads take.
"""
import ctypes
import os
import select
import signal
import sys

PTRACE_CONT, PTRACE_DETACH, PTRACE_GETEVENTMSG, PTRACE_SEIZE = 7, 17, 0x4201, 0x4206
O_TRACEFORK, O_TRACEEXEC, O_TRACEEXIT = 0x2, 0x10, 0x40
EVENT_FORK, EVENT_EXEC, EVENT_EXIT, EVENT_STOP = 1, 4, 6, 128
WALL = 0x40000000

# the shell line the chain runs the application through: $1 is the FIFO
WRAP = ["sh", "-c", 'echo $$ >"$0" && kill -STOP $$ && exec "$@"']

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
libc.ptrace.restype = ctypes.c_long


def ptrace(req, pid, addr=0, data=0):
    return libc.ptrace(req, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data))


def flags(pid, fd):
    try:
        what = os.readlink("/proc/%d/fd/%d" % (pid, fd)).split(":")[0]
        with open("/proc/%d/fdinfo/%d" % (pid, fd)) as f:
            for line in f:
                if line.startswith("flags:"):
                    nb = int(line.split()[1], 8) & os.O_NONBLOCK
                    return "%s:%s" % (what if what in ("socket", "pipe") else "file",
                                      "nonblocking" if nb else "blocking")
    except OSError:
        pass
    return "-"


def exe(pid):
    try:
        return os.path.basename(os.readlink("/proc/%d/exe" % pid))
    except OSError:
        return "?"


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def stat(pid):
    """The fields of /proc/PID/stat after the command's name: state,
    parent, ...; None once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def parent(pid):
    fields = stat(pid)
    return int(fields[1]) if fields else None


def stopped(pid):
    fields = stat(pid)
    return fields[0] in ("T", "t") if fields else None


def ours(pid):
    """Whether this process traces pid (a kid may be gone, or let go and
    its pid taken by another, by the time its parent's fork is seen)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            return any(l.split() == ["TracerPid:", str(os.getpid())] for l in f)
    except OSError:
        return False


def main():
    fifo, logpath = sys.argv[1:3]
    try:
        # the application waits for us at each stop: on a loaded machine
        # our delay would become its delay, and its timeouts would fire
        os.nice(-10)
    except OSError:
        pass
    logf = open(logpath, "a", buffering=1)
    rfd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # RDWR: never an EOF
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    conn = {}      # traced pid -> (cN, "app" | "engine" | "kid")
    pending = b""
    n = 0
    while True:
        select.select([rfd, wake_r], [], [], 1.0)
        try:
            os.read(wake_r, 4096)
        except BlockingIOError:
            pass
        try:
            pending += os.read(rfd, 65536)
        except BlockingIOError:
            pass
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            pid = int(line)
            n += 1
            name = "c%d" % n
            while stopped(pid) is False:  # it announces itself, then stops
                select.select([], [], [], 0.0005)
            logf.write("%s app-pid %d\n" % (name, pid))
            try:
                link = os.readlink("/proc/%d/fd/0" % pid)
                if link.startswith("socket:["):
                    logf.write("%s client-socket %s\n" % (name, link[8:-1]))
            except OSError:
                pass
            # its forks are followed (they inherit these options) up to
            # their exec: that is where -S hands the socket to s6-ioconnect
            if ptrace(PTRACE_SEIZE, pid, 0, O_TRACEFORK | O_TRACEEXEC | O_TRACEEXIT) == 0:
                conn[pid] = (name, "app")
            # s6-ucspitlsd's child, already forked, waits for the command
            for kid in children(pid):
                if exe(kid) == "s6-ucspitlsd" and ptrace(PTRACE_SEIZE, kid, 0, O_TRACEEXEC) == 0:
                    conn[kid] = (name, "engine")
            os.kill(pid, signal.SIGCONT)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | WALL)
            except ChildProcessError:
                break
            if not pid:
                break
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                conn.pop(pid, None)
                continue
            if pid not in conn:
                # a new child's first stop may come before its parent's
                # fork event: it belongs where its parent does
                conn[pid] = (conn.get(parent(pid), ("?", "?"))[0], "kid")
            name, role = conn[pid]
            sig, event = os.WSTOPSIG(status), status >> 16
            if event == EVENT_FORK:
                kid = ctypes.c_ulong()
                ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(kid))
                if ours(kid.value):
                    conn[kid.value] = (name, "kid")
                ptrace(PTRACE_CONT, pid)
            elif event == EVENT_EXEC and role == "kid":
                logf.write("%s kid-exec %s fd0=%s fd1=%s\n" % (name, exe(pid), flags(pid, 0), flags(pid, 1)))
                ptrace(PTRACE_DETACH, pid)
                conn.pop(pid, None)
            elif event == EVENT_EXEC:
                if role == "app":
                    logf.write("%s exec %s fd0=%s fd1=%s\n" % (name, exe(pid), flags(pid, 0), flags(pid, 1)))
                elif exe(pid) != "s6-ucspitlsd":
                    logf.write("%s engine-exec %s fd0=%s\n" % (name, exe(pid), flags(pid, 0)))
                    # the engine runs on untraced: nothing of ours in its way
                    ptrace(PTRACE_DETACH, pid)
                    conn.pop(pid, None)
                    continue
                ptrace(PTRACE_CONT, pid)
            elif event == EVENT_EXIT and role == "kid":
                ptrace(PTRACE_CONT, pid)
            elif event == EVENT_EXIT:
                code = ctypes.c_ulong()
                ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(code))
                logf.write("%s app-end fd0=%s fd1=%s\n" % (name, flags(pid, 0), flags(pid, 1)))
                st = code.value
                logf.write("%s app-exit %s\n" % (name, "code=%d" % os.WEXITSTATUS(st)
                                                  if os.WIFEXITED(st) else "signal=%d" % os.WTERMSIG(st)))
                ptrace(PTRACE_CONT, pid)
            elif event == EVENT_STOP or sig == signal.SIGTRAP and event:
                ptrace(PTRACE_CONT, pid)
            else:
                # a signal on its way to the tracee: deliver it as it was
                ptrace(PTRACE_CONT, pid, 0, sig)


if __name__ == "__main__":
    main()
