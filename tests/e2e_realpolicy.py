"""README's per-client TLS policy recipes (issue 21: "Per-client TLS
policy"), run as written through the real servers: s6-tcpserver-access
with a rules folder whose env/ sets UCSPITLS (s6-networking on libtls and
on BearSSL), and sslserver -x with a cdb made by tcprules. A client from
each rule's address gets that rule's policy."""
import bed
from e2e import check, test
from realchain import KINDS, Site, connect, free_port, missing

DASH, PARTNER, OTHER = "127.0.0.5", "127.0.6.9", "127.0.0.9"
# on the wire (a stuffed dot line, the final dot) and as stored
WIRE = b"Subject: policy\r\n\r\n..dot line\r\nbody\r\n.\r\n"
STORED = b"Subject: policy\r\n\r\n.dot line\r\nbody\r\n"
ADDRS = [("192.0.2.7", "127.0.0.5"), ("198.51.100.", "127.0.6.")]


def start(kind):
    site = Site(kind)
    port = free_port()
    name = "policy-sslserver" if kind == "sslserver" else "policy-s6"
    where = site.install(name, site.subs(port, ADDRS))
    if "/etc/smtpd/rules.sh" in where:
        site.run(["sh", where["/etc/smtpd/rules.sh"]])
    site.start([where["/etc/smtpd/run"]], port)
    return site, port


def begin(site, port, src):
    c = connect(src, port)
    mark = site.mark()
    g = c.reply()
    check(g.startswith(b"220 "), "%s: greeting %r" % (src, g))
    d = site.session_dir(src, c.sock.getsockname()[1])
    c.send(b"EHLO client.test\r\n")
    return c, mark, d, c.reply()


def ended(site, mark, src, tls):
    lines = site.proxy_lines(mark)
    end = [l for l in lines if ": end: " in l]
    check(len(end) == 1, "end lines: %s" % lines)
    check(all((" ip %s: " % src) in l for l in lines), "%s: %s" % (src, lines))
    check(("TLSv1" in end[0]) == tls and "exit 0" in end[0], end[0])
    check(not [l for l in lines if ": warning: " in l or ": fatal: " in l], lines)


def policy(kind):
    why = missing()
    if why:
        return why
    site, port = start(kind)
    try:
        # the broken host: no STARTTLS at all
        c, mark, d, ehlo = begin(site, port, DASH)
        check(ehlo.startswith(b"250-") and b"STARTTLS" not in ehlo, "%s: %r" % (DASH, ehlo))
        c.send(b"STARTTLS\r\n")
        check(c.reply() == b"502 5.5.1 STARTTLS not offered to this client\r\n", DASH)
        c.send(b"MAIL FROM:<a@x.test>\r\nQUIT\r\n")
        r = c.replies(2)
        check(r[0].startswith(b"250 ") and r[1].startswith(b"221 "), r)
        c.close()
        ended(site, mark, DASH, False)
        cmds = (site.file(d, "commands") or b"").decode().splitlines()
        check(cmds == ["EHLO client.test", "MAIL FROM:<a@x.test>", "QUIT"], cmds)
        env = site.env(d)
        check(b"UCSPITLS" not in env and env.get(b"TCPREMOTEIP", env.get(b"SSLREMOTEIP")) == DASH.encode(),
              "%s: %s" % (DASH, env))

        # the partner: TLS or nothing
        c, mark, d, ehlo = begin(site, port, PARTNER)
        check(ehlo.endswith(b"250 STARTTLS\r\n"), "%s: %r" % (PARTNER, ehlo))
        c.send(b"MAIL FROM:<a@x.test>\r\n")
        check(c.reply() == b"530 5.7.0 Must issue a STARTTLS command first\r\n", PARTNER)
        c.send(b"STARTTLS\r\n")
        check(c.reply() == b"220 2.0.0 Ready to start TLS\r\n", PARTNER)
        c.starttls()
        c.send(b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        r = c.replies(4)
        check(b"STARTTLS" not in r[0] and r[3].startswith(b"354"), r)
        c.send(WIRE + b"QUIT\r\n")
        r = c.replies(2)
        check(r[0].startswith(b"250 ") and r[1].startswith(b"221 "), r)
        c.close()
        ended(site, mark, PARTNER, True)
        check(site.file(d, "msg-1") == STORED, "message: %r" % site.file(d, "msg-1"))
        cmds = (site.file(d, "commands") or b"").decode().splitlines()
        check(cmds.count("MAIL FROM:<a@x.test>") == 1, cmds)
        check(b"UCSPITLS" not in site.env(d), PARTNER)

        # everyone else: the default
        c, mark, d, ehlo = begin(site, port, OTHER)
        check(ehlo.endswith(b"250 STARTTLS\r\n"), "%s: %r" % (OTHER, ehlo))
        c.send(b"MAIL FROM:<a@x.test>\r\nQUIT\r\n")
        r = c.replies(2)
        check(r[0].startswith(b"250 ") and r[1].startswith(b"221 "), r)
        c.close()
        ended(site, mark, OTHER, False)
        check(b"UCSPITLS" not in site.env(d), OTHER)
    finally:
        site.close()


# real servers only (make check-real), once under each real kind
@test(kinds=KINDS)
def real_policy_recipe(_, __):
    return policy(bed.KIND)
