# shellcheck shell=dash
# provisioner runtime: the one script both initramfs flavours run (mkinitcpio's
# hooks/provisioner and the native builder's /init source it). It brings up the network,
# mounts the image read-only as the lower layer and a tmpfs as the upper one, unpacks the
# node's overlay into the upper layer, reports each stage to the master and leaves an
# overlayfs root mounted on the directory given to pv_boot. Parameters: initcpio/README.md.
#
# Needs busybox applets: ip udhcpc mount wget timeout cpio zcat sed tr insmod modprobe hostname
# syslogd klogd logger.

PV_RUN=/run/provisioner
PV_LIB=/lib/provisioner
# The node's report credential, in its overlay (root only): the master believes no report without it.
PV_CREDENTIAL_FILE=etc/provisioner/credential
PV_CRED=""

PV_SYSLOG_PIDS=""

pv_log() {
    echo "provisioner: $*"
    [ -z "$PV_SYSLOG_PIDS" ] || logger -t provisioner "$*"
}

# pv_param NAME DEFAULT: the value of provisioner.NAME= on the kernel command line.
pv_param() {
    local w cmdline
    read -r cmdline </proc/cmdline
    for w in $cmdline; do
        case "$w" in
            "provisioner.$1="*) echo "${w#*=}"; return 0 ;;
        esac
    done
    echo "$2"
}

pv_read_cmdline() {
    PV_NODE=$(pv_param node "")
    PV_ROOT=$(pv_param root "")
    PV_NFSVERS=$(pv_param nfsvers 4.2)
    PV_OVERLAY=$(pv_param overlay "")
    PV_REPORT=$(pv_param report "")
    PV_DEBUG=$(pv_param debug 0)
    PV_RETRY=$(pv_param retry 30)
    PV_IFACE=$(pv_param iface "")
    PV_TMPFS=$(pv_param tmpfs 50%)
    PV_SYSLOG=$(pv_param syslog "")
    PV_BOOTIF=""
    local w cmdline
    read -r cmdline </proc/cmdline
    for w in $cmdline; do
        case "$w" in BOOTIF=*) PV_BOOTIF=${w#BOOTIF=} ;; esac
    done
}

# pv_fail MESSAGE: say what went wrong, tell the master, then give a shell (debug only) or
# reboot after provisioner.retry seconds so the node tries again from PXE.
pv_fail() {
    echo "provisioner: ERROR: $*" >&2
    [ -z "$PV_SYSLOG_PIDS" ] || logger -t provisioner -p user.err "ERROR: $*"
    pv_report failed "$*"
    if [ "$PV_DEBUG" = 1 ]; then
        echo "provisioner: debug shell (provisioner.debug=1); exit it to reboot" >&2
        sh -i </dev/console >/dev/console 2>&1
    else
        echo "provisioner: rebooting in ${PV_RETRY}s (add provisioner.debug=1 for a shell)" >&2
        sleep "$PV_RETRY"
    fi
    reboot -f
    sleep 60
}

# pv_http URL OUTFILE [POSTFILE]: GET (or POST a JSON file) with busybox wget, from a
# privileged source port: secure servers only trust ports < 1024 for secrets and reports.
# Only for the call, new connections take their port from 600-1023 (the kernel wants the
# unprivileged-port floor below such a range); the booted system keeps the usual settings.
# Prints wget's error, if any, on stdout.
pv_http() {
    local url=$1 out=$2 post=$3 range floor rc
    range=$(cat /proc/sys/net/ipv4/ip_local_port_range)
    floor=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)
    echo 600 >/proc/sys/net/ipv4/ip_unprivileged_port_start
    echo "600 1023" >/proc/sys/net/ipv4/ip_local_port_range
    if [ -n "$post" ]; then
        timeout 20 wget -q -O "$out" --header "Content-Type: application/json" \
            ${PV_CRED:+--header "Authorization: Bearer $PV_CRED"} --post-file "$post" "$url" 2>"$PV_RUN/http.err"
    else
        timeout 60 wget -q -O "$out" "$url" 2>"$PV_RUN/http.err"
    fi
    rc=$?
    echo "$range" >/proc/sys/net/ipv4/ip_local_port_range
    echo "$floor" >/proc/sys/net/ipv4/ip_unprivileged_port_start
    [ $rc = 0 ] || { tr '\n' ' ' <"$PV_RUN/http.err"; [ -s "$PV_RUN/http.err" ] || echo "timed out"; }
    return $rc
}

# pv_json_escape TEXT: TEXT as the inside of a JSON string.
pv_json_escape() {
    printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr '\n\t' '  '
}

# pv_report STAGE DETAIL: best effort; a boot never waits long on the master's log. The
# master believes a report only with the credential from the overlay (pv_fetch_overlay).
pv_report() {
    [ -n "$PV_REPORT" ] && [ -n "$PV_NETUP" ] || return 0
    printf '{"stage": "%s", "detail": "%s"}' "$1" "$(pv_json_escape "$2")" >"$PV_RUN/report.json"
    pv_http "$PV_REPORT/stage" "$PV_RUN/report.out" "$PV_RUN/report.json" >/dev/null 2>&1 || :
}

pv_load_modules() {
    local m
    if [ -f "$PV_LIB/modules" ]; then
        while read -r m; do
            insmod "$m" 2>/dev/null || [ -d "/sys/module/$(basename "${m%%.ko*}" | tr - _)" ] \
                || pv_log "warning: could not load $m"
        done <"$PV_LIB/modules"
    else
        modprobe -qa nfsv4 nfsv3 overlay || :
    fi
}

# The interfaces to try: the one PXE booted from (BOOTIF), provisioner.iface, or all.
pv_ifaces() {
    local i want wait=0 found=""
    while [ -z "$found" ] && [ $wait -lt 20 ]; do
        for i in /sys/class/net/*; do
            [ "${i##*/}" = lo ] || found=1
        done
        [ -n "$found" ] || sleep 0.5
        wait=$((wait + 1))
    done
    if [ -n "$PV_IFACE" ]; then
        echo "$PV_IFACE"
        return
    fi
    if [ -n "$PV_BOOTIF" ]; then
        want=$(echo "${PV_BOOTIF#01-}" | tr - : | tr 'A-F' 'a-f')
        for i in /sys/class/net/*; do
            [ "$(cat "$i/address")" = "$want" ] && { basename "$i"; return; }
        done
    fi
    for i in /sys/class/net/*; do
        [ "${i##*/}" = lo ] || basename "$i"
    done
}

pv_network() {
    local i tried=""
    rm -f "$PV_RUN/net.env"
    for i in $(pv_ifaces); do
        tried="$tried $i"
        ip link set "$i" up
        udhcpc -i "$i" -n -q -t 6 -T 2 -O rootpath -O hostname -s "$PV_LIB/udhcpc.script" >/dev/null 2>&1 \
            && [ -f "$PV_RUN/net.env" ] && break
    done
    [ -f "$PV_RUN/net.env" ] || pv_fail "no DHCP lease on any interface (tried:$tried)"
    # shellcheck source=/dev/null
    . "$PV_RUN/net.env"
    PV_NETUP=1
    # shellcheck disable=SC2153 # PV_IP and PV_IF come from net.env, written by udhcpc.script
    pv_log "network: $PV_IP on $PV_IF"
}

# pv_syslog: from the moment the network is up, busybox syslogd sends what the runtime logs
# (and klogd the kernel's messages) to the master's syslog: provisioner.syslog=HOST[:PORT],
# by default the host of provisioner.report on port 514, `off` for none. So a node that cannot
# mount its root says why on the master too (`provisioner logs NODE` there). UDP: a boot never
# waits on it.
pv_syslog() {
    local target=$PV_SYSLOG host wait=0
    [ "$target" = off ] && return 0
    if [ -z "$target" ]; then
        host=${PV_REPORT#*://}
        host=${host%%/*}
        host=${host%%:*}
        [ -n "$host" ] || return 0
        target=$host:514
    fi
    syslogd -n -R "$target" &
    PV_SYSLOG_PIDS=$!
    klogd -n &
    PV_SYSLOG_PIDS="$PV_SYSLOG_PIDS $!"
    while [ ! -S /dev/log ] && [ $wait -lt 100 ]; do
        sleep 0.05
        wait=$((wait + 1))
    done
    pv_log "boot begins (node ${PV_NODE:-?}, $PV_IP on $PV_IF, syslog to $target)"
}

# pv_syslog_stop: before switch_root, once the last line has left. syslogd's socket goes too:
# /dev moves into the new root, and a dead /dev/log there would keep systemd from linking its
# journal's socket in its place (every syslog(3) caller would then get "Connection refused").
pv_syslog_stop() {
    [ -n "$PV_SYSLOG_PIDS" ] || return 0
    sleep 0.2
    # shellcheck disable=SC2086 # a list of pids
    kill $PV_SYSLOG_PIDS 2>/dev/null
    PV_SYSLOG_PIDS=""
    rm -f /dev/log
}

# NFSv4 servers tell clients apart by an owner string built from the hostname (and an
# optional unique id). In an initramfs every node is "(none)", so nodes booting together
# would share one NFS identity and steal each other's state: the root then hangs. Name the
# client before the first mount.
pv_nfs_identity() {
    local mac=""
    [ -n "$PV_NODE" ] && hostname "$PV_NODE"
    [ -n "$PV_IF" ] && [ -r "/sys/class/net/$PV_IF/address" ] && read -r mac <"/sys/class/net/$PV_IF/address"
    if [ -n "$mac" ] && [ -w /sys/module/nfs/parameters/nfs4_unique_id ]; then
        echo "$mac" >/sys/module/nfs/parameters/nfs4_unique_id
    fi
}

# pv_mount_root: the read-only lower layer, from provisioner.root or the DHCP root-path.
#   nfs:SERVER:/EXPORT   an NFS export (what client nodes use)
#   dev:DEVICE[:SUBDIR]  a local filesystem (the master boots the same image from disk)
pv_mount_root() {
    local root=$PV_ROOT spec server path opts type out try dev sub
    if [ -z "$root" ] && [ -n "$PV_ROOTPATH" ]; then
        root=nfs:${PV_ROOTPATH#nfs:}
        case "$root" in nfs:/*) root="nfs:$PV_SERVERID:${root#nfs:}" ;; esac
    fi
    [ -n "$root" ] || pv_fail "no root given: set provisioner.root=nfs:SERVER:/images/IMAGE/versions/VERSION/rootfs or a DHCP root-path"
    mkdir -p "$PV_RUN/lower"
    case "$root" in
        nfs:*)
            spec=${root#nfs:}
            server=${spec%%:*}
            path=${spec#*:}
            type=nfs4
            opts="ro,vers=$PV_NFSVERS"
            case "$PV_NFSVERS" in 3*) type=nfs; opts="$opts,nolock,proto=tcp,addr=$server" ;; esac
            for try in 1 2 3; do
                out=$(mount -t "$type" -o "$opts" "$server:$path" "$PV_RUN/lower" 2>&1) && break
                pv_log "NFS mount of $server:$path failed (attempt $try): $out"
                sleep 2
            done
            grep -q " $PV_RUN/lower " /proc/mounts \
                || pv_fail "cannot mount the NFS root $server:$path (NFS $PV_NFSVERS): $out; is the server up and exporting $path to $PV_IP?"
            PV_LOWER=$PV_RUN/lower
            ;;
        dev:*)
            spec=${root#dev:}
            dev=${spec%%:*}
            sub=""
            [ "$dev" != "$spec" ] && sub=${spec#*:}
            try=0
            while [ ! -e "$dev" ] && [ $try -lt 40 ]; do
                sleep 0.25
                try=$((try + 1))
            done
            out=$(mount -o ro "$dev" "$PV_RUN/lower" 2>&1) \
                || pv_fail "cannot mount the local root $dev: $out"
            PV_LOWER=$PV_RUN/lower/${sub#/}
            [ -d "$PV_LOWER" ] || pv_fail "no directory $sub on $dev"
            ;;
        *)
            pv_fail "provisioner.root=$root: expected nfs:SERVER:/EXPORT or dev:DEVICE[:SUBDIR]"
            ;;
    esac
    pv_log "root: $root (read-only)"
    pv_report root "$root"
}

pv_mount_upper() {
    mkdir -p "$PV_RUN/rw"
    mount -t tmpfs -o "mode=0755,size=$PV_TMPFS" tmpfs "$PV_RUN/rw" \
        || pv_fail "cannot mount the tmpfs upper layer (size=$PV_TMPFS)"
    mkdir -p "$PV_RUN/rw/upper" "$PV_RUN/rw/work"
}

# pv_fetch_overlay: the node's overlay, fetched as soon as the network is up: the report
# credential in it lets every report (network included) be believed. A failure here only
# leaves PV_OVERLAY_ERR; pv_apply_overlay fails with it after the root is mounted, as before.
pv_fetch_overlay() {
    local out
    PV_OVERLAY_ERR=""
    [ -n "$PV_OVERLAY" ] || return 0
    if ! out=$(pv_http "$PV_OVERLAY" "$PV_RUN/overlay.cpio.gz"); then
        PV_OVERLAY_ERR="cannot fetch the node overlay $PV_OVERLAY: $out"
        return 0
    fi
    # Not `zcat | cpio`: the pipe's status is cpio's, and cpio unpacks nothing from an empty
    # stream without complaint, so a page that is not an archive would count as applied.
    # busybox zcat also exits 0 on a truncated stream; it still says so on stderr.
    if ! out=$(zcat "$PV_RUN/overlay.cpio.gz" 2>&1 >"$PV_RUN/overlay.cpio") || [ -n "$out" ] \
        || [ ! -s "$PV_RUN/overlay.cpio" ]; then
        PV_OVERLAY_ERR="the node overlay from $PV_OVERLAY is not a gzip cpio archive: ${out:-nothing in it}"
        return 0
    fi
    rm -f "$PV_RUN/overlay.cpio.gz"
    mkdir -p "$PV_RUN/cred"
    (cd "$PV_RUN/cred" && cpio -i -d "$PV_CREDENTIAL_FILE" <"$PV_RUN/overlay.cpio" >/dev/null 2>&1)
    [ -s "$PV_RUN/cred/$PV_CREDENTIAL_FILE" ] && read -r PV_CRED <"$PV_RUN/cred/$PV_CREDENTIAL_FILE"
    rm -rf "$PV_RUN/cred"
    [ -n "$PV_CRED" ] || pv_log "warning: no report credential in the overlay: the master will not believe reports"
}

# The node's own files (hostname, keys, configs) go into the upper layer before the
# overlayfs is mounted, so they shadow the shared image from the first moment.
pv_apply_overlay() {
    local out
    if [ -n "$PV_OVERLAY" ]; then
        [ -z "$PV_OVERLAY_ERR" ] || pv_fail "$PV_OVERLAY_ERR"
        out=$(cd "$PV_RUN/rw/upper" && cpio -i -d -m -u <"$PV_RUN/overlay.cpio" 2>&1) \
            || pv_fail "cannot unpack the node overlay from $PV_OVERLAY: $out"
        rm -f "$PV_RUN/overlay.cpio"
        pv_log "overlay: applied $PV_OVERLAY"
        pv_report overlay "$PV_OVERLAY"
    fi
    if [ -n "$PV_NODE" ]; then
        hostname "$PV_NODE"
        if [ ! -e "$PV_RUN/rw/upper/etc/hostname" ]; then
            mkdir -p "$PV_RUN/rw/upper/etc"
            echo "$PV_NODE" >"$PV_RUN/rw/upper/etc/hostname"
        fi
    fi
}

# pv_boot NEWROOT: everything up to a mounted overlayfs root on NEWROOT.
pv_boot() {
    local newroot=$1 out
    mkdir -p "$PV_RUN"
    pv_read_cmdline
    pv_log "node ${PV_NODE:-?}: loading drivers"
    pv_load_modules
    case "$PV_ROOT" in dev:*) ;; *) pv_network; pv_syslog; pv_nfs_identity ;; esac
    pv_fetch_overlay
    pv_report network "$PV_IP on $PV_IF"
    pv_mount_root
    pv_mount_upper
    pv_apply_overlay
    mkdir -p "$newroot"
    out=$(mount -t overlay overlay \
        -o "lowerdir=$PV_LOWER,upperdir=$PV_RUN/rw/upper,workdir=$PV_RUN/rw/work" "$newroot" 2>&1) \
        || pv_fail "cannot mount the overlay root on $newroot: $out"
    pv_report switch_root "${PV_NODE:-?}"
    pv_log "switching to the image's init"
    pv_syslog_stop
}
