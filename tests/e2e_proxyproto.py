"""README's PROXY protocol recipes (issue 21: "Behind a load balancer"),
run as written through Debian's haproxy (send-proxy-v2, and send-proxy for
v1) in front of the real chains: proxy-server between two
s6-tcpserver-access (s6-networking on libtls and on BearSSL), and as
sslserver's program. The client (127.0.0.9) is not the balancer
(127.0.0.1): the smtpds' TCPREMOTEIP, the log lines and the end line must
name the client; the per-client rules must apply to the client's address;
a connection straight from a client must be refused, and a garbage header
end the session before any smtpd starts."""
import os

import bed
from e2e import check, test
from e2e_realpolicy import ADDRS, STORED, WIRE
from realchain import KINDS, Site, connect, free_port, missing

CLIENT, DASH, BALANCER = "127.0.0.9", "127.0.0.5", "127.0.0.1"


def start(kind, version):
    site = Site(kind)
    bport, fport = free_port(), free_port()
    # the per-client rules of "Per-client TLS policy", which both chains apply
    rules = site.install("policy-s6", site.subs(bport, ADDRS))
    site.run(["sh", rules["/etc/smtpd/rules.sh"]])
    name = "proxy-sslserver" if kind == "sslserver" else "proxy-s6"
    where = site.install(name, site.subs(bport, [("10.0.0.2", BALANCER)]))
    if "/etc/smtpd/balancers.sh" in where:
        site.run(["sh", where["/etc/smtpd/balancers.sh"]])
    site.start([where["/etc/smtpd/run"]], bport)
    cfg = site.install("proxy", [("203.0.113.1:25", "127.0.0.1:%d" % fport),
                                 ("10.0.0.3:25", "127.0.0.1:%d" % bport)] +
                       ([("send-proxy-v2", "send-proxy")] if version == 1 else []))
    site.start(["haproxy", "-f", cfg["/etc/haproxy/haproxy.cfg"], "-db"], fport)
    return site, bport, fport


def session(site, port, src, tls):
    """One mail from src through the balancer; returns the smtpd's folder."""
    c = connect(src, port)
    mark = site.mark()
    check(c.reply().startswith(b"220 "), "greeting")
    d = site.session_dir(src, c.sock.getsockname()[1])
    c.send(b"EHLO client.test\r\n")
    ehlo = c.reply()
    check(ehlo.endswith(b"250 STARTTLS\r\n"), "%s: %r" % (src, ehlo))
    if tls:
        c.send(b"STARTTLS\r\n")
        check(c.reply() == b"220 2.0.0 Ready to start TLS\r\n", "STARTTLS")
        c.starttls()
        c.send(b"EHLO client.test\r\n")
        check(b"STARTTLS" not in c.reply(), "EHLO over TLS")
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    r = c.replies(3)
    check(r[2].startswith(b"354"), r)
    c.send(WIRE + b"QUIT\r\n")
    r = c.replies(2)
    check(r[0].startswith(b"250 ") and r[1].startswith(b"221 "), r)
    c.close()
    check(os.path.isdir(d), "no smtpd saw %s with its own port as TCPREMOTEIP-TCPREMOTEPORT: %s"
          % (src, os.listdir(site.sessions)))
    lines = site.proxy_lines(mark)
    end = [l for l in lines if ": end: " in l]
    check(len(end) == 1 and ("TLSv1" in end[0]) == tls and "exit 0" in end[0], lines)
    check(all((" ip %s: " % src) in l for l in lines), "log lines name another address: %s" % lines)
    check(not [l for l in lines if ": warning: " in l or ": fatal: " in l], lines)
    n = 2 if tls else 1   # -e: the smtpd after TLS is the second
    envs = [site.env(d, i) for i in range(1, n + 1)]
    for i, env in enumerate(envs):
        check(env.get(b"TCPREMOTEIP") == src.encode(), "smtpd %d: TCPREMOTEIP %r" % (i + 1, env.get(b"TCPREMOTEIP")))
    if site.kind == "sslserver":
        # sslserver's own variable names the balancer: the log must not take it
        check(envs[0].get(b"SSLREMOTEIP") == BALANCER.encode(), "SSLREMOTEIP %r" % envs[0].get(b"SSLREMOTEIP"))
    if tls:
        check(envs[1].get(b"SSL_PROTOCOL", b"").startswith(b"TLSv1") and envs[1].get(b"SSL_CIPHER"),
              "smtpd after TLS: %r" % envs[1])
    check(site.file(d, "msg-1") == STORED, "message: %r" % site.file(d, "msg-1"))
    return d


def refused(site, port, src, send=b""):
    """A connection from src straight to the chain: it ends without a byte
    for the client, and no smtpd starts. Returns the chain's log lines of it."""
    before = sorted(os.listdir(site.sessions))
    mark = site.mark()
    c = connect(src, port)
    if send:
        c.send(send)
    try:
        got = c.sock.recv(4096)
        while got and len(got) < 4096:
            more = c.sock.recv(4096)
            if not more:
                break
            got += more
    except ConnectionResetError:
        got = b""
    c.close()
    # the EOF comes once every process of the chain that held the
    # connection has gone: an smtpd, had one started, would be there now
    check(got == b"", "%s got %r" % (src, got))
    check(sorted(os.listdir(site.sessions)) == before,
          "an smtpd started: %s" % sorted(set(os.listdir(site.sessions)) - set(before)))
    return site.logtext()[mark:]


def proxyproto(kind, version):
    why = missing()
    if why:
        return why
    site, bport, fport = start(kind, version)
    try:
        session(site, fport, CLIENT, True)
        session(site, fport, CLIENT, False)
        # the second rules see the client, not the balancer: UCSPITLS=- for it
        c = connect(DASH, fport)
        mark = site.mark()
        c.reply()
        c.send(b"EHLO c\r\nQUIT\r\n")
        r = c.replies(2)
        check(b"STARTTLS" not in r[0] and r[1].startswith(b"221"), "%s: %r" % (DASH, r))
        c.close()
        check(all((" ip %s: " % DASH) in l for l in site.proxy_lines(mark)), DASH)
        # not the balancer: the first rules refuse, before any header is read
        # (a well-formed header: had the rules let it through, proxy-server
        # would have taken it and an smtpd greeted)
        log = refused(site, bport, DASH, b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 25\r\nEHLO c\r\n")
        check("proxy-server" not in log, "the chain went past the rules: %r" % log)
        # the balancer's address with a garbage header: proxy-server ends it
        log = refused(site, bport, BALANCER, b"GARBAGE / HTTP/1.0\r\n\r\nEHLO c\r\nMAIL FROM:<a@x.test>\r\n")
        check("proxy-server: " in log and ": fatal: " in log, "proxy-server said nothing of the garbage: %r" % log)
    finally:
        site.close()


def add(version):
    def run(_, __):
        return proxyproto(bed.KIND, version)
    run.__name__ = "real_proxy_v%d" % version
    # real servers only (make check-real), once under each real kind
    test(kinds=KINDS)(run)


for _v in (2, 1):
    add(_v)
