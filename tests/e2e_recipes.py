"""End-to-end tests of README's deployment recipes ("Recipes: stdio smtpds
behind the proxy"). Each recipe's proxy command line and script are read
from README.md (the blocks marked <!-- recipe:NAME chain --> and
<!-- recipe:NAME file:PATH -->) and run as written, only paths changed,
behind the test UCSPI-TLS server in both flavours, with the client's
address given the way each super-server gives it: one STARTTLS mail and
one plaintext mail, stored byte for byte, and the recipe's trap checked."""
import os
import re
import shlex
import shutil
import smtplib
import subprocess
import tempfile
import time

import peers
from bed import PROG, TOP, WORK, Bed, Client, reachable
from e2e import check, test, tls_context

README = os.path.join(TOP, "README.md")
CLIENT = "192.0.2.7"   # the client's address, as the super-server reports it


def recipe(name):
    """(argv, {path: text}) of README's recipe NAME: the proxy's command
    line, the same under s6 and under sslserver -n, and its scripts."""
    with open(README) as f:
        text = f.read()
    argv, files = None, {}
    for m in re.finditer(r"^<!-- recipe:(\S+) (chain|file:(\S+)) -->\n```[a-z]*\n(.*?)^```",
                         text, re.S | re.M):
        if m.group(1) != name:
            continue
        if m.group(2) == "chain":
            lines = m.group(4).splitlines()
            s6 = [l for l in lines if l.startswith("smtpd-starttls-proxy-io")]
            ssl = [l for l in lines if l.startswith("sslserver ")]
            check(len(s6) == 1 and len(ssl) == 1, "recipe %s: chain %r" % (name, lines))
            check(lines[lines.index(s6[0]) - 1] == "s6-applyuidgid -U", lines)
            a, b = shlex.split(s6[0]), shlex.split(ssl[0])
            check("-n" in b[:b.index("smtpd-starttls-proxy-io")], "sslserver without -n: %r" % b)
            check(b[b.index("smtpd-starttls-proxy-io"):] == a, "s6 and sslserver differ: %r %r" % (a, b))
            argv = a
        else:
            files[m.group(3)] = m.group(4)
    check(argv is not None, "README has no recipe %s" % name)
    return argv, files


def install(name, subs=()):
    """README's recipe NAME with its scripts written to a fresh folder, each
    (old, new) of subs replaced in them (old must be there). Returns
    (argv with the proxy and the scripts' paths replaced, folder)."""
    argv, files = recipe(name)
    d = tempfile.mkdtemp(prefix="recipe-%s-" % name, dir=WORK)
    os.chmod(d, 0o755)   # the scripts run as other users too
    where = {}
    for path, body in files.items():
        for old, new in subs:
            if old in body:
                body = body.replace(old, new)
        new = os.path.join(d, os.path.basename(path))
        with open(new, "w") as f:
            f.write(body)
        os.chmod(new, 0o755)
        where[path] = new
    used = " ".join(files.values())
    for old, _ in subs:
        check(old in used or old in argv, "recipe %s: %s is not in README's text" % (name, old))
    # the proxy too may run as another user (setpriv below): a copy it can reach
    out = [reachable(PROG)] + [where.get(a, a) for a in argv[1:]]
    return out, d


def client_env(flavour):
    """The client's address in the environment as each super-server puts
    it (the test server itself says TCPREMOTEIP=127.0.0.1)."""
    if flavour == "s6":
        return ["env", "TCPREMOTEIP=" + CLIENT, "TCPREMOTEPORT=4321",
                "TCPLOCALIP=10.0.0.1", "TCPLOCALPORT=25"]
    return ["env", "-u", "TCPREMOTEIP", "-u", "TCPREMOTEPORT", "PROTO=SSL",
            "SSLREMOTEIP=" + CLIENT, "SSLREMOTEPORT=4321", "SSLLOCALIP=10.0.0.1",
            "SSLLOCALPORT=25"]


def letter(tag):
    """A message with every header an MTA would otherwise add, dot lines."""
    lines = ["From: a@x.test", "To: b@local.test", "Date: Thu, 01 Jan 2026 00:00:00 +0000",
             "Message-ID: <%s@x.test>" % tag, "Subject: recipe %s" % tag, ""]
    lines += ["%s line %d %s" % (tag, i, "." if i % 5 == 0 else "body") for i in range(12)]
    lines += [".starts with a dot", "..two dots", "."]
    return ("\r\n".join(lines) + "\r\n").encode()


def session(port, tls, msg, rcpts=(("b@local.test", 250),)):
    """One mail: EHLO (STARTTLS offered), STARTTLS and EHLO again if tls,
    MAIL, each RCPT with the code it must get, DATA, QUIT. Returns the
    EHLO replies' texts."""
    texts = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        code, text = s.ehlo("c.test")
        check(code == 250 and s.has_extn("starttls"), "EHLO: %r %r" % (code, text))
        texts.append(text)
        if tls:
            code, text = s.starttls(context=tls_context())
            check(code == 220, "STARTTLS: %r %r" % (code, text))
            code, text = s.ehlo("c.test")
            check(code == 250 and not s.has_extn("starttls"), "EHLO after TLS: %r %r" % (code, text))
            texts.append(text)
        code, text = s.mail("a@x.test")
        check(code == 250, "MAIL: %r %r" % (code, text))
        for rcpt, want in rcpts:
            code, text = s.rcpt(rcpt)
            check(code == want, "RCPT %s: %r %r, not %d" % (rcpt, code, text, want))
        code, text = s.data(msg)
        check(code == 250, "DATA: %r %r" % (code, text))
    return texts


def refused(port, rcpt, want):
    """EHLO, MAIL, RCPT TO:<rcpt> must get the reply starting with want;
    QUIT. Returns the EHLO reply and the RCPT reply."""
    c = Client(port, timeout=30)
    c.reply()
    c.send(b"EHLO c.test\r\n")
    ehlo = c.reply()
    c.send(b"MAIL FROM:<a@x.test>\r\n")
    r = c.reply()
    check(r.startswith(b"250"), "MAIL: %r" % r)
    c.send(b"RCPT TO:<%s>\r\n" % rcpt.encode())
    r = c.reply()
    check(r.startswith(want), "RCPT TO:<%s>: %r, not %r" % (rcpt, r, want))
    c.send(b"QUIT\r\n")
    check(c.reply().startswith(b"221"), "QUIT")
    c.close()
    return ehlo, r


def ended(bed, conns, tls_conns=()):
    """Each session's application ended (cleanly, except that sslserver
    SIGTERMs it at the end of a TLS session) and nothing is left running."""
    for conn in conns:
        code = bed.wait_exit(conn)
        check(code is not None, "%s: the application never exited" % conn)
        if conn not in tls_conns or bed.flavour == "s6":
            check(code == "code=0", "%s: application exit %s" % (conn, code))
    check(not bed.leftovers(), "processes left behind")
    err = bed.stderr_text()
    check("smtpd-starttls-proxy-io" not in err, "proxy stderr: %r" % err[-1000:])


def strip_received(msg):
    """A stored message (LF line ends) without its first header if that is
    a Received: one, back to CRLF."""
    return peers.content("msmtpd", msg)


def first_received(msg):
    m = re.match(rb"Received:.*?\n(?![ \t])", msg, re.S)
    check(m, "no Received header first: %r" % msg[:200])
    return m.group(0)


def wait_for(fn, n, timeout=20):
    end = time.time() + timeout
    while True:
        got = fn()
        if len(got) >= n or time.time() > end:
            return got
        time.sleep(0.1)


# --- exim -bs ---

EXIM_CONF = """primary_hostname = mx.test
domainlist local_domains = local.test
hostlist relay_from_hosts = 127.0.0.1 : ::1
acl_smtp_rcpt = acl_rcpt
spool_directory = {dir}/spool
log_file_path = {dir}/%slog
exim_user = nobody
exim_group = nogroup
never_users =
trusted_users = root
begin acl
# as Debian's stock acl_check_rcpt: a local caller, then local domains,
# then relay_from_hosts
acl_rcpt:
  accept hosts = :
  accept domains = +local_domains
  accept hosts = +relay_from_hosts
  deny message = relay not permitted
begin routers
local:
  driver = accept
  domains = +local_domains
  transport = tofile
begin transports
tofile:
  driver = appendfile
  file = {dir}/mbox
  user = nobody
  group = nogroup
  mode = 0666
"""


def exim_path():
    return shutil.which("exim4") or ("/usr/sbin/exim4" if os.access("/usr/sbin/exim4", os.X_OK) else None)


def mbox_messages(path):
    try:
        with open(path, "rb") as f:
            box = f.read()
    except FileNotFoundError:
        return []
    # appendfile: a "From " line before each message, an empty line after
    parts = re.split(rb"^From \S+ [^\n]*\n", box, flags=re.M)
    return [p for p in parts if p]


@test()
def recipe_exim(flavour, _):
    """exim -bs as README runs it, with a configuration whose ACL is
    Debian's (a local caller may relay): mail from the client is stored
    intact, a foreign RCPT is refused, exim saw the client's address."""
    exim = exim_path()
    if not exim:
        return "exim4 not installed"
    d = tempfile.mkdtemp(prefix="exim-", dir=WORK)
    os.chmod(d, 0o1777)
    conf = os.path.join(d, "exim.conf")
    with open(conf, "w") as f:
        f.write(EXIM_CONF.format(dir=d))
    argv, _ = install("exim", [("/usr/sbin/exim4 -bs", "%s -C %s -bs" % (exim, conf))])
    bed = Bed(flavour, app=client_env(flavour) + argv)
    try:
        tls_msg, plain_msg = letter("tls"), letter("plain")
        session(bed.port, True, tls_msg,
                (("b@local.test", 250), ("victim@elsewhere.example", 550)))
        texts = session(bed.port, False, plain_msg,
                        (("victim@elsewhere.example", 550), ("b@local.test", 250)))
        check(b"[%s]" % CLIENT.encode() in texts[0], "exim does not know the client: %r" % texts[0])
        ended(bed, ("c1", "c2"), ("c1",))
        got = wait_for(lambda: mbox_messages(os.path.join(d, "mbox")), 2)
        check(len(got) == 2, "%d messages in the mbox" % len(got))
        for stored, sent in zip(got, (tls_msg, plain_msg)):
            rec = first_received(stored)
            check(b"from c.test ([%s]" % CLIENT.encode() in rec or b"[%s]" % CLIENT.encode() in rec, rec)
            check(b"with esmtp " in rec and b"local-" not in rec, rec)
            # appendfile ends each message with an empty line
            check(strip_received(stored) == sent + b"\r\n", "stored %r, sent %r" % (stored[-200:], sent[-200:]))
    finally:
        bed.close()
        shutil.rmtree(d, ignore_errors=True)


def exim_stock_rcpt(flavour, app, user, group=None):
    # setpriv stands for s6-applyuidgid -U (or sslserver -U)
    bed = Bed(flavour, app=(["setpriv", "--reuid", user, "--regid", group or user, "--init-groups"]
                            if user != "root" else []) + client_env(flavour) + app)
    try:
        ehlo, rcpt = refused(bed.port, "victim@elsewhere.example", b"")
        ended(bed, ("c1",))
        return ehlo, rcpt
    finally:
        bed.close()


@test()
def recipe_exim_stock_debian(flavour, _):
    """Debian's own exim configuration, no DATA sent: bare exim -bs relays
    for anyone (the trap); README's script, run as root or Debian-exim
    (trusted callers), refuses a foreign RCPT; run by an untrusted user,
    exim drops -oMa and relays again, as README warns."""
    exim = exim_path()
    if not exim:
        return "exim4 not installed"
    if subprocess.run([exim, "-bV"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        return "exim4 has no working configuration"
    argv, _ = install("exim", [("/usr/sbin/exim4", exim)])
    ehlo, r = exim_stock_rcpt(flavour, [PROG, exim, "-bs"], "root")
    check(r.startswith(b"250"), "bare exim -bs refused a foreign RCPT: %r" % r)
    check(b"Hello root at c.test\r\n" in ehlo, ehlo)
    for user in ("root", "Debian-exim"):
        ehlo, r = exim_stock_rcpt(flavour, argv, user)
        check(r.startswith(b"550"), "as %s, foreign RCPT: %r" % (user, r))
        check(b"[%s]" % CLIENT.encode() in ehlo, ehlo)
    ehlo, r = exim_stock_rcpt(flavour, argv, "nobody", "nogroup")
    check(r.startswith(b"250") and b"[%s]" % CLIENT.encode() not in ehlo,
          "untrusted caller: -oMa honoured? %r %r" % (ehlo, r))


# --- the peers: qpsmtpd, msmtpd, courieresmtpd, Postfix ---

def peer_recipe(flavour, name, peer, subs, wrap=None, env=None, rcpts=()):
    """README's recipe NAME for peers' PEER: a STARTTLS mail, a plaintext
    one, both stored intact. wrap(argv, outdir) gives the final argv."""
    why = peers.why_not(peer)
    if why:
        return why, None
    out = tempfile.mkdtemp(prefix="out-%s-" % peer, dir=WORK)
    os.chmod(out, 0o777)
    argv, _ = install(name, [(a, b.replace("OUTDIR", out)) for a, b in subs])
    if wrap:
        argv = wrap(argv, out)
    e = dict(env or {})
    e["PEERS_OUTDIR"] = out
    bed = Bed(flavour, app=client_env(flavour) + argv, env=e)
    try:
        sent = (letter("tls"), letter("plain"))
        session(bed.port, True, sent[0], (("b@local.test", 250),) + tuple(rcpts))
        session(bed.port, False, sent[1], tuple(rcpts) + (("b@local.test", 250),))
        ended(bed, ("c1", "c2"), ("c1",))
        got = wait_for(lambda: peers.messages(peer, out), 2)
        check(len(got) == 2, "%s stored %d messages" % (peer, len(got)))
        for stored, msg in zip(got, sent):
            check(peers.content(peer, stored) == msg, "%s stored %r" % (peer, stored[:300]))
        return got, out
    finally:
        bed.close()


QP = os.path.join(peers.peers_dir(), "qpsmtpd", "config")


@test()
def recipe_qpsmtpd(flavour, _):
    """README's qpsmtpd script with -e (a second EHLO is refused by
    qpsmtpd): it greets on a pipe, both mails are stored, relaying to a
    foreign domain is denied."""
    got, out = peer_recipe(flavour, "qpsmtpd", "qpsmtpd", [("/etc/qpsmtpd", QP)],
                           rcpts=(("victim@elsewhere.example", 550),))
    if out is None:
        return got
    check(peers.envelopes("qpsmtpd", out) == [(b"<a@x.test>", [b"<b@local.test>"])] * 2,
          peers.envelopes("qpsmtpd", out))


MSMTPD = os.path.join(peers.peers_dir(), "root", "msmtp-mta", "usr", "bin", "msmtpd")
DELIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "msmtpd-deliver")


@test()
def recipe_msmtpd(flavour, _):
    """README's msmtpd script with -e (msmtpd exits at RSET): both mails
    reach the --command with their envelope."""
    got, out = peer_recipe(flavour, "msmtpd", "msmtpd",
                           [("/usr/bin/msmtpd", MSMTPD),
                            ("/etc/smtpd/msmtpd-deliver", DELIVER + " OUTDIR")])
    if out is None:
        return got
    check(peers.envelopes("msmtpd", out) == [(b"<a@x.test>", [b"<b@local.test>"])] * 2,
          peers.envelopes("msmtpd", out))


COURIER_ENV = {"BOFHCHECKDNS": "0", "NOADDMSGID": "1", "NOADDDATE": "1"}


def courier_wrap(argv, out):
    # the script runs in the mount namespace that stands for courier's install
    ns = os.path.join(peers.peers_dir(), "bin", "courieresmtpd-stdio")
    return argv[:-1] + [ns, out, argv[-1]]


@test()
def recipe_courier(flavour, _):
    """README's courieresmtpd script: with RELAYCLIENT (as rules would set
    it) both mails are stored, the client's address in courier's form;
    without it a foreign recipient is refused."""
    got, out = peer_recipe(flavour, "courier", "courier", [], wrap=courier_wrap,
                           env=dict(COURIER_ENV, RELAYCLIENT=""))
    if out is None:
        return got
    for m in got:
        check(b"([::ffff:%s])" % CLIENT.encode() in first_received(m), first_received(m))
    argv, _ = install("courier")
    bed = Bed(flavour, app=client_env(flavour) + courier_wrap(argv, out), env=COURIER_ENV)
    try:
        refused(bed.port, "victim@elsewhere.example", b"513")
        ended(bed, ("c1",))
    finally:
        bed.close()


@test()
def postfix_sendmail_bs_relays_for_anyone(flavour, _):
    """Why README warns against Postfix's sendmail -bs: behind the proxy,
    any client gets a foreign recipient accepted."""
    run = peers.smtpd("postfix", tempfile.mkdtemp(prefix="postfix-", dir=WORK))
    if run is None:
        return peers.why_not("postfix")
    bed = Bed(flavour, app=client_env(flavour) + [PROG] + run[0])
    try:
        _, r = refused(bed.port, "victim@elsewhere.example", b"250 2.1.5 Ok")
        ended(bed, ("c1",))
    finally:
        bed.close()
    with open(README) as f:
        check("sendmail -bs`: do not use it" in f.read(), "README lost its warning")


# --- mailfront ---

def queuedir_messages(q):
    out = []
    new = os.path.join(q, "new")
    for name in sorted(os.listdir(new), key=lambda n: (os.stat(os.path.join(new, n)).st_mtime_ns, n)):
        with open(os.path.join(new, name), "rb") as f:
            data = f.read()
        env, _, msg = data.partition(b"\0\0")
        out.append((env.split(b"\0"), msg))
    return out


@test()
def recipe_mailfront(flavour, _):
    """README's mailfront line: with RELAYCLIENT both mails land in the
    queue directory intact, the client's address in the Received line
    (SSLREMOTEIP under sslserver, by PROTO); without it the recipient is
    refused."""
    argv, _ = install("mailfront")
    if not os.access(argv[1], os.X_OK):
        return "mailfront not installed"
    q = tempfile.mkdtemp(prefix="queuedir-", dir=WORK)
    for sub in ("tmp", "new"):
        os.mkdir(os.path.join(q, sub))
    bed = Bed(flavour, app=client_env(flavour) + argv, env={"QUEUEDIR": q, "RELAYCLIENT": ""})
    try:
        sent = (letter("tls"), letter("plain"))
        session(bed.port, True, sent[0])
        session(bed.port, False, sent[1])
        ended(bed, ("c1", "c2"), ("c1",))
    finally:
        bed.close()
    got = queuedir_messages(q)
    check(len(got) == 2, "%d messages in the queue directory" % len(got))
    for (env, stored), msg in zip(got, sent):
        check(env == [b"a@x.test", b"b@local.test"], env)
        rec = first_received(stored)
        check(b"([%s])" % CLIENT.encode() in rec, rec)
        check((b"via SSL" in rec) == (flavour == "sslserver"), rec)
        check(strip_received(stored) == msg, "stored %r" % stored[:300])
    bed = Bed(flavour, app=client_env(flavour) + argv, env={"QUEUEDIR": q})
    try:
        refused(bed.port, "b@local.test", b"550 5.1.0")
        ended(bed, ("c1",))
    finally:
        bed.close()


# --- the scripts refuse to guess ---

@test(flavours=("s6",))
def recipe_scripts_need_client_address(_, __):
    """Each recipe script, started with no client address in its
    environment, exits non-zero before the smtpd says anything."""
    for name in ("exim", "qpsmtpd", "courier", "qmail"):
        _, files = recipe(name)
        d = tempfile.mkdtemp(prefix="noaddr-", dir=WORK)
        for path, body in files.items():
            p = os.path.join(d, os.path.basename(path))
            with open(p, "w") as f:
                f.write(body)
            os.chmod(p, 0o755)
            env = {k: v for k, v in os.environ.items()
                   if not (k.startswith("TCP") or k.startswith("SSL"))}
            r = subprocess.run([p], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, timeout=30)
            check(r.returncode != 0 and r.stdout == b"",
                  "%s: exit %d, said %r" % (path, r.returncode, r.stdout[:200]))
            check(b"no client address" in r.stderr, "%s: %r" % (path, r.stderr[-300:]))
        shutil.rmtree(d, ignore_errors=True)
