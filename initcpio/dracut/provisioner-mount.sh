#!/bin/sh
# shellcheck shell=dash
# dracut mount hook: the shared runtime mounts the overlayfs root on $NEWROOT (network,
# NFS or local lower layer, tmpfs upper, the node's overlay, stage reports); dracut then
# switches into it. Run under the module's busybox, its applets first on PATH.
# shellcheck disable=SC2154 # NEWROOT and root are dracut's (ismounted too: dracut-lib.sh)

if [ "$root" = provisioner ] && ! ismounted "$NEWROOT"; then
    PATH=/lib/provisioner/bin:$PATH /lib/provisioner/bin/sh -c '. /lib/provisioner/provisioner.sh && pv_boot "$1"' \
        provisioner "$NEWROOT"
fi
