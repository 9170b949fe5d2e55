#!/bin/busybox sh
# PID 1 of the lvs-operator test VM. It lives in the initramfs and uses only the static busybox
# there: starting a dynamically linked host binary over 9p costs ~0.2 s under TCG, a busybox
# applet from RAM ~10 ms, so all of the set-up happens here and the host's tools start only
# for the command itself.
#
# 1. load the modules (9p first, then IPVS, ipset, netfilter, tunnels: listed by the harness)
# 2. mount the host's / read-only over 9p on /newroot, with writable tmpfs/overlays on top
# 3. run the command chrooted into /newroot (ctl/launch.sh, written by the host per run)
# 4. report its exit status (ctl/status and a console marker) and power off
#
# It stays in the initramfs root on purpose: the kernel's module autoloader runs
# /proc/sys/kernel/modprobe relative to this root, and the wrapper below chroots too.
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/null >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

R=/newroot
V=$R/run/lvs-vm  # GUEST_DIR in _run.py, as seen from here
warn() { echo "lvs-vm: warning: $*"; }
die() {
    echo "lvs-vm: error: $*"
    echo "@@LVS-VM-FAILED@@ 125"  # no control share, so the host reads the status from here
    sync
    poweroff -f
    sleep 5  # not reached; if it were, panic=-1 and qemu's -no-reboot end the VM
    exit 125
}
load() {
    while read -r ko; do
        insmod "/modules/$ko" 2>/dev/null || $1 "insmod $ko failed"
    done <"/modules/$2"
}

load die boot.order
load warn preload.order

o=trans=virtio,version=9p2000.L,msize=512000
# cache=loose: the host tree does not change under a test run, and caching makes Python's
# thousands of stat()/open() calls at start-up much cheaper.
mount -t 9p -o "$o,ro,cache=loose" hostroot $R || die "cannot mount the host's / over 9p"
mount -t tmpfs -o mode=755,nosuid,nodev run $R/run || die "cannot mount tmpfs on /run"
mkdir -p $V/ctl $V/out $V/modules $V/bin $V/rw $R/run/netns $R/run/lock
mount -t 9p -o "$o" lvsctl $V/ctl || die "cannot mount the control share"
mount -t 9p -o "$o" lvsout $V/out || die "cannot mount the output share"
nonce=$(cat $V/ctl/nonce)

mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devpts -o ptmxmode=0666,mode=620 devpts $R/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm $R/dev/shm
mount -o bind "$R$(cat $V/ctl/modules_root)" $V/modules || warn "cannot bind the module tree"

# Writable places on top of the read-only host tree. An overlay keeps the host's files visible
# (a checkout or a cache under /tmp still works); an empty tmpfs is the fallback.
for d in /tmp /var/tmp /var/lib /var/cache /var/log /var/run; do
    [ -d "$R$d" ] && [ ! -L "$R$d" ] || continue
    n=$(echo "$d" | tr / _)
    mkdir -p "$V/rw/$n/upper" "$V/rw/$n/work"
    mount -t overlay -o "lowerdir=$R$d,upperdir=$V/rw/$n/upper,workdir=$V/rw/$n/work" \
        "overlay$n" "$R$d" 2>/dev/null && continue
    warn "overlay on $d failed; using an empty tmpfs"
    mount -t tmpfs -o mode=1777 "tmpfs$n" "$R$d"
done
chmod 1777 $R/tmp $R/var/tmp 2>/dev/null

# Module autoloading (request_module) and a plain `modprobe NAME` typed by a test must both
# find the Debian kernel's modules, not the host's.
printf '#!/bin/sh\nexec /bin/chroot %s /usr/sbin/modprobe -d /run/lvs-vm/modules "$@"\n' $R \
    >/bin/lvs-modprobe
printf '#!/bin/sh\nexec /usr/sbin/modprobe -d /run/lvs-vm/modules "$@"\n' >$V/bin/modprobe
chmod 755 /bin/lvs-modprobe $V/bin/modprobe
echo /bin/lvs-modprobe >/proc/sys/kernel/modprobe

ip link set lo up
if [ -s $V/ctl/net ]; then
    # Only the user-mode NIC's guestfwd relays exist behind eth0 (restrict=on, no route).
    load warn net.order
    ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up || warn "cannot configure eth0"
fi

echo "@@LVS-VM-START-$nonce@@"
(. $V/ctl/launch.sh)
rc=$?
echo "$rc" >$V/ctl/status
echo
echo "@@LVS-VM-EXIT-$nonce@@ $rc"
sync
poweroff -f
sleep 5
