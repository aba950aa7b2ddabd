#!/bin/bash
# Runs a command in a Debian root (.ci/debian13-root.sh) with what it needs
# mounted: /proc, /dev/shm (Kamailio's shared memory and locks) and, with
# --bind, host directories at the same path inside the root (a node's
# directory, the module), so that paths mean the same inside and out.
#
#   in-root.sh [--throwaway] DIR [--bind PATH]... [--] CMD [ARG]...
#
# --throwaway runs CMD in a copy of DIR that is gone with it: an overlay
# whose changes are kept in memory (DIR may be /, the host's own system:
# then the host's /dev is mounted in it too).
#
# The mounts are made in a private mount namespace of the command's own
# (unshare): the host never sees them, and they go away with the last
# process of the command, however it ends (exit, failure, SIGKILL); nothing
# is left to unmount. Every step execs, so CMD keeps this script's PID:
# a caller can signal, wait for and group it as if it had started CMD.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "$0: needs root (unshare, chroot)" >&2; exit 1; }
if [ "${1:-}" != --inside ]; then
	exec unshare --mount --propagation private -- bash "$0" --inside "$@"
fi
shift
throwaway=
if [ "${1:-}" = --throwaway ]; then
	throwaway=yes
	shift
fi
root=$(cd "${1:?usage: in-root.sh [--throwaway] DIR [--bind PATH]... [--] CMD...}" \
	&& pwd -P)
shift
[ -x "$root/usr/bin/env" ] || { echo "$0: $root is not a Debian root" >&2; exit 1; }
if [ -n "$throwaway" ]; then
	# /mnt of this namespace only: the host's is untouched
	mount -t tmpfs -o mode=0755 throwaway /mnt
	mkdir /mnt/changes /mnt/work /mnt/root
	mount -t overlay throwaway -o "lowerdir=$root,upperdir=/mnt/changes,workdir=/mnt/work" \
		/mnt/root
	root=/mnt/root
	[ -c "$root/dev/null" ] || mount --rbind /dev "$root/dev"
fi
binds=()
while [ $# -gt 0 ]; do
	case $1 in
	--bind) binds+=("$(cd "${2:?--bind PATH}" && pwd -P)"); shift 2 ;;
	--) shift; break ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "$0: no command" >&2; exit 2; }
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
for p in "${binds[@]}"; do
	mkdir -p "$root$p"
	mount --bind "$p" "$root$p"
done
exec chroot "$root" "$@"
