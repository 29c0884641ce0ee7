#!/bin/sh
# Boots a throwaway, real systemd user manager (+ its own journald) for one test.
# Started (and torn down) by test/helpers/systemd.ts; runnable by hand to debug:
#
#   systemd-user-manager.sh BASE LOG_LEVEL CGROUP_DIR...
#
# 1. Moves itself into CGROUP_DIR... (created by the caller, one per cgroup hierarchy): everything
#    it starts stays in there, so the caller can kill it all through the cgroup.
# 2. Re-executes itself in a private mount namespace, where tmpfs mounts hide the host's
#    /run/systemd, /run/log and /var/log/journal: /run/systemd/system exists in there only (so
#    sd_booted() is true for the manager and its services), journald's sockets, files and
#    configuration drop-in are ours.
# 3. Starts systemd-journald, waits for its socket, and execs `systemd --user` with an empty
#    environment (`env -i`) but for HOME=BASE/home, XDG_RUNTIME_DIR=BASE/rt and XDG_CONFIG_HOME:
#    the manager's private bus is BASE/rt/systemd/private, its unit files BASE/home/.config/systemd/user/.
#    The pid of this script becomes the manager's pid (every step execs).
set -eu

if [ "${1-}" != --in-namespace ]; then
  base=$1 level=$2
  shift 2
  for cgroup_dir in "$@"; do echo $$ > "$cgroup_dir/cgroup.procs"; done
  exec unshare --mount --propagation private -- /bin/sh "$0" --in-namespace "$base" "$level"
fi

base=$2 level=$3
sd=/usr/lib/systemd
[ -x "$sd/systemd" ] || sd=/lib/systemd

mkdir -p /run/systemd /run/log
mount -t tmpfs -o mode=755 ecdysis-sd-run /run/systemd
mkdir /run/systemd/system
mount -t tmpfs -o mode=755 ecdysis-sd-log /run/log
if [ -d /var/log/journal ]; then mount -t tmpfs -o mode=2755 ecdysis-sd-journal /var/log/journal; fi
# Where the manager writes when it cannot reach the journal: a file, not the host's console.
mount --bind "$base/console.log" /dev/console
# journald reads drop-ins from /run/systemd (ours now): memory only, no copy of the kernel's ring
# buffer, no forwarding anywhere, no rate limit on what tests print.
mkdir /run/systemd/journald.conf.d
printf '%s\n' '[Journal]' Storage=volatile ReadKMsg=no ForwardToSyslog=no ForwardToKMsg=no \
  ForwardToConsole=no ForwardToWall=no RateLimitIntervalSec=0 > /run/systemd/journald.conf.d/ecdysis-test.conf

"$sd/systemd-journald" < /dev/null >> "$base/console.log" 2>&1 &
echo $! > "$base/journald.pid"
tries=0
until [ -S /run/systemd/journal/socket ]; do
  tries=$((tries + 1))
  if [ "$tries" -gt 100 ]; then echo "systemd-journald did not create its socket within 5 s" >&2; exit 1; fi
  sleep 0.05
done

exec env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$base/home" USER=root LOGNAME=root SHELL=/bin/sh \
  XDG_RUNTIME_DIR="$base/rt" XDG_CONFIG_HOME="$base/home/.config" \
  "$sd/systemd" --user --log-target=journal --log-level="$level"
