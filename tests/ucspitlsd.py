#!/usr/bin/env python3
"""A UCSPI-TLS super-server for tests, in two flavours.

  ucspitlsd.py -f s6|sslserver -c CERT -k KEY [-l LOG] [-p PORT] -- prog args...

Listens on 127.0.0.1 (PORT 0: any; the port is printed on stdout's first
line), and for each connection runs prog with the client socket on fds 0/1
and SSLCTLFD, SSLREADFD, SSLWRITEFD set, doing real TLS when asked.

s6 flavour (like s6-ucspitlsd): the connection's process execs prog; a child
waits on the control socket. EOF there = TLS declined: the child exits
quietly. y/Y = handshake, refused when the client socket was left
O_NONBLOCK (as s6-tlsd-io on libtls fails). After Y the block is written and
the control socket closed; a failed handshake closes it with nothing sent.

sslserver flavour (like fehcom's sslserver -n): a forked child runs prog,
the TLS engine stays in the parent. As the real one does, it leaves the
application a stray copy of the client socket beside fds 0/1, and its own
configuration variables (CERTCHAINFILE, KEYPASS, SSL_UID, ...). EOF on the control socket without a
command = the application is killed with SIGTERM. After Y the block ends in
\\0\\0 and the socket stays open for the whole session. A failed handshake
kills the application. The application's EOF sends close_notify, and the
client's bytes still reach the application until the client's EOF; a
client's EOF without close_notify ends the session at once (OpenSSL 3 calls
it an error). When the session ends the application gets SIGTERM.

--libtls (either flavour): the TLS engine behaves like s6-tlsd-io on libtls,
which stops at once, dropping whatever it has not yet sent to the client,
when the reader of SSLREADFD goes away before the client's EOF.

Fault injection, for what a real server does only by chance:
--ctl-close-early closes the control socket at once; --hangup-wait MS waits,
after the command and before the handshake, up to MS for the client to hang
up (as a loaded server may be that late); --block-pad N adds an N-octet
entry to the block.
A crash of this program is a defect of the test bed: the engine prints its
traceback, and the bed fails the test that saw it.

Every event is a line in LOG: "<conn> <event> ...", among them "app-pid N"
(the pid the application runs as) and "client-socket INODE".
"""
import argparse
import fcntl
import os
import select
import signal
import socket
import ssl
import sys
import time
import traceback

LOG = None


def log(conn, *words):
    if LOG is None:
        return
    line = "%s %s\n" % (conn, " ".join(str(w) for w in words))
    try:
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return  # the bed is closed and its folder gone: nobody reads it
    os.write(fd, line.encode())
    os.close(fd)


def block(flavour, tls, certpem, pad=0):
    ver = tls.version() or ""
    cipher = (tls.cipher() or ("", "", 0))
    if flavour == "s6":
        entries = ["SSL_PROTOCOL=" + ver, "SSL_CIPHER=" + cipher[0],
                   "SSL_TLS_SNI_SERVERNAME", "SSL_PEER_CERT_HASH",
                   "SSL_PEER_CERT_SUBJECT"]
    else:
        # as the real sslserver 0.13.07 on OpenSSL 3 sends it to a client
        # without a certificate: no SSL_CLIENT_* entry at all
        entries = ["SSL_PROTOCOL=" + ver, "SSL_SESSION_ID=" + os.urandom(32).hex(),
                   "SSL_CIPHER=" + cipher[0], "SSL_CIPHER_EXPORT=false",
                   "SSL_CIPHER_USEKEYSIZE=%d" % cipher[2],
                   "SSL_CIPHER_ALGKEYSIZE=%d" % cipher[2],
                   "SSL_VERSION_INTERFACE=ucspi-ssl", "SSL_VERSION_LIBRARY=" + ssl.OPENSSL_VERSION,
                   "SSL_SERVER_M_VERSION=3", "SSL_SERVER_S_DN=/CN=localhost",
                   "SSL_SERVER_S_DN_CN=localhost", "SSL_SERVER_I_DN=/CN=localhost",
                   "SSL_SERVER_I_DN_CN=localhost", "SSL_SERVER_CERT=" + certpem]
    if pad:
        entries.append("SSL_PAD=" + "p" * pad)
    return "".join(e + "\0" for e in entries).encode() + b"\0"


def pump(conn, tls, rpipe, wpipe, flavour, libtls):
    """Relays between the TLS connection and the application's pipes. The
    client's EOF closes the pipe to the application. The application's EOF
    ends the session (sslserver) or becomes a TCP half-close (s6-tlsd-io
    without -S), after which we wait for the client's EOF. libtls: the
    pipe to the application is watched even with nothing to write to it,
    and its reader's going away is seen before anything else that poll
    reports with it, as s6-tlsd-io on libtls does when it dies of it."""
    tls.setblocking(False)
    os.set_blocking(rpipe, False)
    os.set_blocking(wpipe, False)
    toapp = toclient = b""
    client_eof = app_eof = halfclosed = False
    rpipe_open = True
    try:
        while True:
            if client_eof and not toapp and rpipe_open:
                os.close(rpipe)
                rpipe_open = False
            if app_eof and not toclient and not halfclosed:
                if flavour == "sslserver":
                    # as sslserver's ssl_io: close_notify, then the client's
                    # bytes still go to the application until the client's EOF
                    try:
                        tls.unwrap()
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                    except (ssl.SSLError, OSError):
                        return
                else:
                    half = socket.socket(fileno=os.dup(tls.fileno()))
                    try:
                        half.shutdown(socket.SHUT_WR)
                    except OSError:
                        # the client is gone (reset): the engine ends
                        return
                    finally:
                        half.close()
                halfclosed = True
            if halfclosed and not rpipe_open:
                return
            events = {}
            if not client_eof and not toapp:
                events[tls.fileno()] = select.POLLIN
            if toclient:
                events[tls.fileno()] = events.get(tls.fileno(), 0) | select.POLLOUT
            if toapp and rpipe_open:
                events[rpipe] = select.POLLOUT
            if not app_eof and not toclient:
                events[wpipe] = select.POLLIN
            watch = libtls and rpipe_open and not client_eof
            if watch:
                events.setdefault(rpipe, 0)
            po = select.poll()
            for fd, ev in events.items():
                po.register(fd, ev)
            ready = po.poll(0 if tls.pending() else 600000)
            if watch and any(fd == rpipe and ev & select.POLLERR for fd, ev in ready):
                log(conn, "local-reader-gone", "unsent", len(toclient))
                return
            if not ready and not tls.pending():
                log(conn, "tls-idle-timeout")
                return
            if not client_eof and not toapp:
                try:
                    data = tls.recv(65536)
                    if data:
                        toapp = data
                    else:
                        client_eof = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except ssl.SSLEOFError:
                    # the client's TCP EOF without close_notify: sslserver on
                    # OpenSSL 3 takes it as an SSL error and ends the session
                    # at once (the application is SIGTERMed if still running)
                    log(conn, "tls-eof-unclean")
                    if flavour == "sslserver":
                        return
                    client_eof = True
                except (ssl.SSLError, OSError) as e:
                    log(conn, "tls-read-error", type(e).__name__)
                    client_eof = True
            if toclient:
                try:
                    toclient = toclient[tls.send(toclient):]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except (ssl.SSLError, OSError) as e:
                    log(conn, "tls-write-error", type(e).__name__)
                    toclient = b""
                    app_eof = True
            if toapp and rpipe_open:
                try:
                    toapp = toapp[os.write(rpipe, toapp):]
                except BlockingIOError:
                    pass
                except OSError as e:
                    # the application closed its read pipe while we held its
                    # bytes: s6-tlsd-io dies here, losing what it still held
                    log(conn, "pipe-write-error", e.errno, "lost", len(toclient))
                    if flavour == "s6":
                        return
                    toapp = b""
            if not app_eof and not toclient:
                try:
                    data = os.read(wpipe, 65536)
                    if data:
                        toclient = data
                    else:
                        app_eof = True
                except BlockingIOError:
                    pass
    finally:
        # the engine's end closes its pipes, as a real engine's exit does:
        # the application's relay sees EOF even while we wait for it
        if rpipe_open:
            os.close(rpipe)
        os.close(wpipe)


class NoPeer(OSError):
    """The client socket has no peer left when the handshake is to start."""


def engine(conn, args, sock, ctl, rpipe, wpipe, app):
    """The TLS side of one connection. app: the application's pid when this
    process is its parent (sslserver), else None."""
    def kill_app(why):
        if app and app not in REAPED:
            log(conn, "sigterm-app", why)
            try:
                os.kill(app, signal.SIGTERM)
            except ProcessLookupError:
                pass

    cmd = b""
    if args.ctl_close_early:
        log(conn, "ctl-closed-early")
        os.close(ctl)
        return
    try:
        cmd = os.read(ctl, 1)
    except OSError:
        pass
    if not cmd:
        log(conn, "declined")
        if args.flavour == "sslserver":
            kill_app("declined")
        return
    log(conn, "command", cmd.decode(errors="replace"))
    if cmd not in (b"y", b"Y"):
        log(conn, "bad-command")
        kill_app("bad-command")
        return
    if args.flavour == "s6" and fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK:
        log(conn, "handshake-failed", "client-socket-left-nonblocking")
        os.close(ctl)
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    if args.hangup_wait:
        po = select.poll()
        po.register(sock.fileno(), 0)  # a hang-up is always reported
        po.poll(args.hangup_wait)
    try:
        sock.settimeout(30)
        # an EOF without close_notify raises, as it is an error to OpenSSL 3
        # (and so to sslserver); pump says what each flavour does with it
        tls = ctx.wrap_socket(sock, server_side=True, suppress_ragged_eofs=False)
        if tls.cipher() is None:
            # wrap_socket skips the handshake, raising nothing, when the
            # socket has no peer any more and its EOF came before the
            # reset: a real server's handshake fails there
            raise NoPeer("the client is gone before the handshake")
    except (ssl.SSLError, OSError) as e:
        log(conn, "handshake-failed", type(e).__name__)
        if args.flavour == "sslserver":
            kill_app("handshake-failed")
        else:
            os.close(ctl)
        return
    log(conn, "handshake-ok", tls.version(), tls.cipher()[0])
    if cmd == b"Y":
        certpem = open(args.cert).read()
        data = block(args.flavour, tls, certpem, args.block_pad)
        try:
            while data:
                data = data[os.write(ctl, data):]
        except OSError as e:
            # the application is gone (it died during the handshake)
            log(conn, "block-write-error", type(e).__name__)
            kill_app("block-write-error")
            return
    if args.flavour == "s6":
        os.close(ctl)
    pump(conn, tls, rpipe, wpipe, args.flavour, args.libtls)
    log(conn, "tls-done")
    tls.close()
    if args.flavour == "sslserver":
        kill_app("session-end")


def handle(conn, args, sock):
    ctl_app, ctl_srv = socket.socketpair()
    r_app, r_srv = os.pipe()   # decrypted client data: we write r_srv
    w_srv, w_app = os.pipe()   # data to encrypt: the app writes w_app
    app_fds = (ctl_app.fileno(), r_app, w_app)
    env = dict(os.environ)
    env.update(SSLCTLFD=str(app_fds[0]), SSLREADFD=str(app_fds[1]),
               SSLWRITEFD=str(app_fds[2]), TCPREMOTEIP="127.0.0.1",
               PROTO="TCP")
    if args.flavour == "sslserver":
        # sslserver reads these for itself and leaves them to the application
        env.update(CERTFILE=args.cert, KEYFILE=args.key, CERTCHAINFILE=args.cert,
                   CAFILE="/nonexistent/ca.pem", CADIR="/nonexistent/ca", CCAFILE="-",
                   CCAVERIFY="", DHFILE="/nonexistent/dh.pem", CIPHERS="HIGH", VERIFYDEPTH="1",
                   KEYPASS="secret", SSL_UID="65534", SSL_GID="65534", SSL_USER="nobody",
                   SSL_GROUP="nogroup", SSL_CHROOT="/nonexistent", SSLREMOTEIP="127.0.0.1")
    if args.flavour == "s6":
        # s6-networking 2.8.0.1 leaks these to the application by default
        env.update(CERTFILE=args.cert, KEYFILE=args.key, CAFILE="/nonexistent/ca.pem",
                   CADIR="/nonexistent/ca", TLS_UID="65534", TLS_GID="65534")
        env["KEYFILE:mx.example"] = args.key
        env["CERTFILE:mx.example"] = args.cert

    def exec_app():
        os.dup2(sock.fileno(), 0)
        os.dup2(sock.fileno(), 1)
        for fd in app_fds:
            os.set_inheritable(fd, True)
        if args.flavour == "sslserver":
            os.set_inheritable(os.dup(sock.fileno()), True)
        os.close(ctl_srv.fileno())
        os.close(r_srv)
        os.close(w_srv)
        sock.close()
        try:
            os.execvpe(args.prog[0], args.prog, env)
        finally:
            os._exit(126)

    def engine_side():
        ctl_app.close()
        os.close(r_app)
        os.close(w_app)
        return ctl_srv.detach()

    log(conn, "client-socket", os.fstat(sock.fileno()).st_ino)
    pid = os.fork()
    if args.flavour == "s6":
        if pid:
            log(conn, "app-pid", os.getpid())
            exec_app()
        try:
            engine(conn, args, sock, engine_side(), r_srv, w_srv, None)
        except Exception:
            # said, so that the bed fails the test (bed.CRASHED)
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        finally:
            os._exit(0)
    else:
        if not pid:
            exec_app()
        log(conn, "app-pid", pid)

        # the application's exit is logged when it happens: the session
        # may go on to the client's EOF after it (close_notify sent)
        signal.signal(signal.SIGCHLD, lambda *_: reaped(conn, pid, os.WNOHANG))
        ctl = engine_side()
        engine(conn, args, sock, ctl, r_srv, w_srv, pid)
        reaped(conn, pid, 0)
        os._exit(0)


REAPED = set()  # sslserver flavour: the application, once its exit is logged


def reaped(conn, pid, flags):
    if pid in REAPED:
        return
    try:
        p, status = os.waitpid(pid, flags)
    except ChildProcessError:
        return
    if p:
        REAPED.add(pid)
        log(conn, "app-exit", describe(status))


def describe(status):
    if os.WIFEXITED(status):
        return "code=%d" % os.WEXITSTATUS(status)
    return "signal=%d" % os.WTERMSIG(status)


def main():
    global LOG
    p = argparse.ArgumentParser()
    p.add_argument("-f", "--flavour", choices=("s6", "sslserver"), required=True)
    p.add_argument("-c", "--cert", required=True)
    p.add_argument("-k", "--key", required=True)
    p.add_argument("-l", "--log")
    p.add_argument("-p", "--port", type=int, default=0)
    p.add_argument("--ctl-close-early", action="store_true",
                   help="close the control socket at once, as a broken server would")
    p.add_argument("--libtls", action="store_true",
                   help="die, dropping what is unsent, when SSLREADFD's reader goes away early")
    p.add_argument("--hangup-wait", type=int, default=0, metavar="MS",
                   help="before the handshake, wait up to MS for the client to hang up")
    p.add_argument("--block-pad", type=int, default=0,
                   help="one more block entry, SSL_PAD, with a value of this many octets")
    p.add_argument("prog", nargs="+")
    args = p.parse_args()
    LOG = args.log
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.port))
    lsock.listen(256)
    print(lsock.getsockname()[1], flush=True)
    kids = {}

    def reap(*_):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            conn = kids.pop(pid, "?")
            if args.flavour == "s6":
                log(conn, "app-exit", describe(status))
            else:
                log(conn, "handler-exit", describe(status))

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    n = 0
    while True:
        try:
            sock, _ = lsock.accept()
        except InterruptedError:
            continue
        n += 1
        conn = "c%d" % n
        # an app that exits at once must find its name in kids when reaped
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
        pid = os.fork()
        if not pid:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            lsock.close()
            log(conn, "connect", args.flavour)
            handle(conn, args, sock)
            os._exit(0)
        kids[pid] = conn
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        sock.close()


if __name__ == "__main__":
    main()
