#!/bin/sh
# make bench: strips a copy of the program, builds one without the splice
# fast path and a static musl one (when musl-gcc is there), then runs the
# driver with every contender.
# BENCH_PROXY=/path/to/other adds another program with the same interface,
# run exactly like ours (with s6-ioconnect as its relay); ANCHORS=DIR adds
# the reference program built there.
set -eu
w=tests/work/bench
mkdir -p "$w"
# build OUT CC [FLAGS...]: the program, stripped, into $w/OUT
build() {
  out=$1 cc=$2
  shift 2
  $cc -Os -std=c99 -D_POSIX_C_SOURCE=200809L "$@" -o "$w/$out" proxy.c smtp.c ucspitls.c relay.c io.c smtpd.c end.c signals.c log.c fmt.c
  strip "$w/$out"
}
cp smtpd-starttls-proxy-io "$w/proxy"
strip "$w/proxy"
# -e: a new smtpd after TLS, the proxy waiting for it; -L: the content
# guard, which keeps the engine in the middle after STARTTLS too
set -- floor=floor default="$w/proxy" fresh="$w/proxy,-e" L="$w/proxy,-L"
if command -v s6-ioconnect >/dev/null; then
  set -- "$@" ioconnect="$w/proxy,-S"
else
  echo "bench: s6-ioconnect not found: no ioconnect (-S) contender" >&2
fi
# the relay's portable path, as on systems without splice(2)
build proxy-copy "${CC:-cc}" -DRELAY_NO_SPLICE
set -- "$@" copy="$w/proxy-copy"
if command -v musl-gcc >/dev/null; then
  build proxy-static musl-gcc -static
  set -- "$@" static="$w/proxy-static"
else
  echo "bench: musl-gcc not found: no static contender" >&2
fi
# the reference implementation, skarnet's, as ../shared/anchors/build.sh
# builds it into ANCHORS (make bench ANCHORS=DIR); it takes no options
if [ -n "${BENCH_PROXY:-}" ]; then
  set -- "$@" other="$BENCH_PROXY"
fi
if [ -n "${ANCHORS:-}" ]; then
  set -- "$@" reference="$ANCHORS/s6/bin/smtpd-starttls-proxy-io"
fi
uname -srm
grep -m1 'model name' /proc/cpuinfo 2>/dev/null || :
exec tests/bench -n "${BENCH_N:-1000}" -r "${BENCH_RUNS:-5}" -m "${BENCH_MIB:-1024}" \
  tests/bench_smtpd "$@"
