#!/bin/sh
# Make third-party SMTP peers from Debian runnable by the tests, without
# touching the system MTA (exim4-daemon-light stays installed):
#
#   tests/peers.sh [DIR]          (DIR defaults to tests/work-peers: not tests/work,
#                                 which tests/run.py empties at each run)
#
# Packages that install without conflicts are installed with apt-get when
# missing and we are root (qpsmtpd, msmtp, a few libraries). Packages that
# would replace exim (msmtp-mta, postfix, courier-mta) are fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` under DIR/root, never
# configured or started. Each peer gets a wrapper under DIR/bin that sets
# its environment; see tests/PEERS.md. A peer that cannot be set up is
# reported and skipped; the script fails only when none can be.
#
# Idempotent: a package already unpacked (DIR/root/NAME/.ok holds the
# version) is not fetched again, generated files are rewritten each run.
# Starts no daemon.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/work-peers}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
case $dir in
*"'"* | *" "*) echo "peers.sh: $dir: no quotes or spaces, please" >&2; exit 2 ;;
esac
mkdir -p "$dir/debs" "$dir/root" "$dir/bin"
export DEBIAN_FRONTEND=noninteractive

say() { echo "peers.sh: $*" >&2; }
updated=no

apt_update_once() {
    [ "$updated" = yes ] && return 0
    updated=yes
    [ "$(id -u)" = 0 ] || return 0
    apt-get update >/dev/null 2>&1 || say "apt-get update failed"
}

# installed PKG: dpkg has it configured
installed() {
    dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

# need PKG...: apt-get install the missing ones (root only)
need() {
    missing=
    for _p in "$@"; do installed "$_p" || missing="$missing $_p"; done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        say "not root, cannot install:$missing"
        return 1
    fi
    # shellcheck disable=SC2086
    if ! apt-get install -y --no-install-recommends $missing >"$dir/apt.log" 2>&1; then
        apt_update_once
        # shellcheck disable=SC2086
        apt-get install -y --no-install-recommends $missing >"$dir/apt.log" 2>&1 || {
            say "apt-get install$missing failed, see $dir/apt.log"
            return 1
        }
    fi
}

# unpack ROOT PKG...: download each PKG and unpack it into DIR/root/ROOT
unpack() {
    _root=$dir/root/$1
    shift
    want=
    for _p in "$@"; do
        _v=$(apt-cache policy "$_p" 2>/dev/null | sed -n 's/^ *Candidate: //p')
        if [ -z "$_v" ] || [ "$_v" = "(none)" ]; then
            apt_update_once
            _v=$(apt-cache policy "$_p" 2>/dev/null | sed -n 's/^ *Candidate: //p')
        fi
        [ -n "$_v" ] && [ "$_v" != "(none)" ] || { say "no candidate for $_p"; return 1; }
        want="$want $_p=$_v"
    done
    if [ -f "$_root/.ok" ] && [ "$(cat "$_root/.ok")" = "$want" ]; then
        return 0
    fi
    rm -rf "$_root"
    mkdir -p "$_root"
    for _pv in $want; do
        _p=${_pv%%=*}
        # apt-get download names the file PKG_VERSION_ARCH.deb (an epoch's
        # colon as %3a)
        rm -f "$dir/debs/${_p}_"*.deb
        (cd "$dir/debs" && apt-get download "$_pv" >/dev/null 2>&1) || {
            apt_update_once
            (cd "$dir/debs" && apt-get download "$_pv" >/dev/null 2>&1)
        } || { say "apt-get download $_pv failed"; return 1; }
        dpkg-deb -x "$dir/debs/${_p}_"*.deb "$_root" || return 1
    done
    echo "$want" >"$_root/.ok"
}

# wrapper NAME: write stdin to DIR/bin/NAME, executable
wrapper() {
    cat >"$dir/bin/$1.tmp"
    chmod 755 "$dir/bin/$1.tmp"
    mv -f "$dir/bin/$1.tmp" "$dir/bin/$1"
}

ok=
failed=

# ---------------------------------------------------------------- qpsmtpd
# Plain install (no conflict; its daemon is disabled by default and not
# started). Debian ships no tcpserver-style `qpsmtpd` script: our
# tests/peers/qpsmtpd-stdio runs Qpsmtpd::TcpServer on stdin/stdout.
setup_qpsmtpd() {
    need qpsmtpd || return 1
    perl -MQpsmtpd::TcpServer -e1 2>/dev/null || { say "qpsmtpd perl modules do not load"; return 1; }
    q=$dir/qpsmtpd
    mkdir -p "$q/config" "$q/spool"
    chmod 700 "$q/spool"
    rm -f "$q/config/"*
    printf '%s\n%s\n' "$here/peers/qpsmtpd-plugins" /usr/share/qpsmtpd/plugins >"$q/config/plugin_dirs"
    # No dnsbl/rhsbl/check_relay: they look things up in the DNS. No tls:
    # qpsmtpd must not advertise STARTTLS itself. rcpt_ok takes rcpthosts.
    printf 'rcpt_ok\nqueue/peers_file\n' >"$q/config/plugins"
    echo qpsmtpd.test >"$q/config/me"
    echo local.test >"$q/config/rcpthosts"
    echo "$q/spool" >"$q/config/spool_dir"
    echo 4 >"$q/config/loglevel"      # LOGWARN, to stderr
    echo 300 >"$q/config/timeout"
    wrapper qpsmtpd-stdio <<EOF
#!/bin/sh
# qpsmtpd-stdio OUTDIR: one qpsmtpd session on stdin/stdout (pipes welcome);
# each accepted message goes to OUTDIR/msg.*.eml (+ .env: the envelope).
[ \$# -ge 1 ] || { echo "usage: \$0 OUTDIR" >&2; exit 2; }
PEERS_OUTDIR=\$1 QPSMTPD_CONFIG='$q/config'
export PEERS_OUTDIR QPSMTPD_CONFIG
exec perl '$here/peers/qpsmtpd-stdio'
EOF
}

# ---------------------------------------------------------------- msmtpd
# msmtpd is in msmtp-mta, which conflicts with exim (mail-transport-agent):
# unpack it; its libraries come with the plain msmtp package.
setup_msmtpd() {
    need msmtp || return 1
    unpack msmtp-mta msmtp-mta || return 1
    "$dir/root/msmtp-mta/usr/bin/msmtpd" --version >/dev/null 2>&1 || { say "msmtpd does not run"; return 1; }
    wrapper msmtpd-stdio <<EOF
#!/bin/sh
# msmtpd-stdio OUTDIR: one msmtpd --inetd session on stdin/stdout; each
# message is piped to peers/msmtpd-deliver, which writes OUTDIR/msg.*.eml.
[ \$# -ge 1 ] || { echo "usage: \$0 OUTDIR" >&2; exit 2; }
case \$1 in *"'"*) echo "\$0: no quotes in OUTDIR" >&2; exit 2 ;; esac
exec '$dir/root/msmtp-mta/usr/bin/msmtpd' --inetd \\
    "--command='$here/peers/msmtpd-deliver' '\$1' %F --"
EOF
}

# ---------------------------------------------------------------- courier
# courier-mta replaces exim: unpack it. courieresmtpd runs the hard-coded
# /usr/lib/courier/courier/submit, which reads /etc/courier and writes
# /var/lib/courier as user courier; peers/courieresmtpd-stdio gives it those
# paths in a private mount namespace (unshare -m, overlayfs), so it needs
# root and overlayfs.
setup_courier() {
    need libidn12 libltdl7 libgdbm6 || return 1
    unpack courier courier-mta courier-base courier-authlib libcourier-unicode4 || return 1
    c=$dir/courier
    rm -rf "$c/etc"
    mkdir -p "$c/etc"
    cp -a "$dir/root/courier/etc/courier" "$c/etc/courier"
    echo courier.test >"$c/etc/courier/me"
    echo courier.test >"$c/etc/courier/defaultdomain"
    # submit runs as MAILUSER courier: a private passwd/group names it.
    # Pick ids nobody on this machine uses.
    id=2525
    while getent passwd "$id" >/dev/null 2>&1 || getent group "$id" >/dev/null 2>&1; do
        id=$((id + 1))
        [ "$id" -lt 3000 ] || { say "no free uid for courier"; return 1; }
    done
    { getent passwd | grep -v '^courier:'; echo "courier:x:$id:$id:courier (tests):/var/lib/courier:/usr/sbin/nologin"; } >"$c/etc/passwd"
    { getent group | grep -v '^courier:'; echo "courier:x:$id:"; } >"$c/etc/group"
    echo "$id" >"$c/uid"
    if ! unshare -m --propagation private sh -c \
        "mount -t overlay overlay -o 'lowerdir=$dir/root/courier/usr/lib:/usr/lib' /usr/lib" 2>/dev/null; then
        say "courier: cannot unshare -m / mount overlayfs here"
        return 1
    fi
    wrapper courieresmtpd-stdio <<EOF
#!/bin/sh
# courieresmtpd-stdio OUTDIR [CMD...]: one courieresmtpd session on
# stdin/stdout (or CMD, run in the same mount namespace instead); the queue
# is OUTDIR/var/courier, each message a D* file under tmp/.
[ \$# -ge 1 ] || { echo "usage: \$0 OUTDIR [CMD...]" >&2; exit 2; }
exec '$here/peers/courieresmtpd-stdio' '$dir/root/courier' '$c' "\$@"
EOF
}

# ---------------------------------------------------------------- postfix
# postfix replaces exim: unpack it, run its client tools with
# LD_LIBRARY_PATH and a private config_directory.
setup_postfix() {
    need libdb5.3 libicu72 libnsl2 libsasl2-2 libssl3 || return 1
    unpack postfix postfix || return 1
    p=$dir/postfix
    r=$dir/root/postfix
    rm -rf "$p"
    mkdir -p "$p/conf/dynamicmaps.cf.d" "$p/queue" "$p/data" "$p/cmd"
    # smtpd -S (sendmail -bs) runs postdrop from command_directory with a
    # cleaned environment: a wrapper there gives it LD_LIBRARY_PATH back.
    cat >"$p/cmd/postdrop" <<EOF
#!/bin/sh
LD_LIBRARY_PATH='$r/usr/lib/postfix'
export LD_LIBRARY_PATH
exec '$r/usr/sbin/postdrop' "\$@"
EOF
    chmod 755 "$p/cmd/postdrop"
    cat >"$p/conf/main.cf" <<EOF
# private config for the extracted Postfix tools (tests only)
compatibility_level = 3.6
myhostname = postfix.test
mydomain = test
myorigin = postfix.test
mydestination = local.test
queue_directory = $p/queue
data_directory = $p/data
command_directory = $p/cmd
daemon_directory = $r/usr/lib/postfix/sbin
shlib_directory = $r/usr/lib/postfix
meta_directory = $p/conf
inet_protocols = ipv4
smtp_host_lookup = native
smtp_dns_support_level = disabled
disable_dns_lookups = yes
maillog_file = /dev/stderr
maillog_file_prefixes = /dev/stderr
# the postfix/postdrop accounts do not exist here: any unprivileged ones
# that differ will do
mail_owner = daemon
default_privs = nobody
setgid_group = mail
# sendmail -bs: no proxymap, aliases or local users to look up
local_recipient_maps =
alias_maps =
alias_database =
import_environment = MAIL_CONFIG TZ LANG=C
EOF
    : >"$p/conf/dynamicmaps.cf"
    : >"$p/conf/master.cf"
    for t in smtp-source posttls-finger sendmail postconf postcat; do
        wrapper "postfix-$t" <<EOF
#!/bin/sh
# extracted Postfix $t with a private config directory
LD_LIBRARY_PATH='$r/usr/lib/postfix'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
MAIL_CONFIG=\${MAIL_CONFIG:-'$p/conf'}
export LD_LIBRARY_PATH MAIL_CONFIG
exec '$r/usr/sbin/$t' "\$@"
EOF
    done
    wrapper postfix-sendmail-bs <<EOF
#!/bin/sh
# postfix-sendmail-bs OUTDIR: Postfix's sendmail -bs (smtpd -S, stand-alone,
# no relay controls: not for network use) on stdin/stdout. Each message
# becomes a queue file in OUTDIR/queue/maildrop (no pickup runs); read it
# with: MAIL_CONFIG=OUTDIR/conf postfix-postcat -bh FILE
[ \$# -ge 1 ] || { echo "usage: \$0 OUTDIR" >&2; exit 2; }
mkdir -p "\$1" && out=\$(cd "\$1" && pwd) || exit 2
if [ ! -f "\$out/conf/main.cf" ]; then
    mkdir -p "\$out/conf" "\$out/queue/maildrop" "\$out/data"
    sed -e "s|^queue_directory = .*|queue_directory = \$out/queue|" \\
        -e "s|^data_directory = .*|data_directory = \$out/data|" \\
        -e "s|^meta_directory = .*|meta_directory = \$out/conf|" \\
        '$p/conf/main.cf' >"\$out/conf/main.cf.tmp"
    : >"\$out/conf/master.cf"
    : >"\$out/conf/dynamicmaps.cf"
    chown daemon:mail "\$out/queue/maildrop"
    chmod 1730 "\$out/queue/maildrop"
    mv "\$out/conf/main.cf.tmp" "\$out/conf/main.cf"
fi
MAIL_CONFIG=\$out/conf
export MAIL_CONFIG
exec '$dir/bin/postfix-sendmail' -bs
EOF
    "$dir/bin/postfix-postconf" -h mail_version >/dev/null 2>&1 || { say "extracted postconf does not run"; return 1; }
}

for peer in qpsmtpd msmtpd courier postfix; do
    if "setup_$peer"; then
        ok="$ok $peer"
    else
        failed="$failed $peer"
    fi
done
printf '%s\n' $ok >"$dir/available"
say "ready:${ok:- none}${failed:+; not available:$failed}"
[ -n "$ok" ]
