#!/bin/sh
# shellcheck shell=dash
# dracut cmdline hook: a node booted with provisioner.root= (or provisioner.node=, the root then
# from DHCP) has its root mounted by provisioner-mount.sh, so dracut looks for no root device.
# shellcheck disable=SC2034 # root and rootok are read by dracut
# shellcheck disable=SC1091 # dracut-lib.sh is dracut's
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

if getarg provisioner.root= >/dev/null || getarg provisioner.node= >/dev/null; then
    root=provisioner
    rootok=1
fi
