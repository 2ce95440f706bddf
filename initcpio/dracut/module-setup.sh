#!/bin/bash
# shellcheck shell=bash
# dracut module "provisioner": boots a diskless node the way the native initramfs and the
# mkinitcpio hook do, with the same runtime (provisioner.sh, run by a static busybox kept
# apart in /lib/provisioner/bin so dracut's own tools stay as they are). `provisioner
# initramfs build IMAGE --generator dracut` copies this folder, the runtime and busybox into
# the image's modules.d/90provisioner and runs the image's own dracut.
# Functions (inst_simple, inst_hook, instmods...) are dracut's own.
# shellcheck disable=SC2154 # moddir and initdir are dracut's

check() {
    return 255 # only when asked for (--add provisioner)
}

depends() {
    echo base
}

installkernel() {
    instmods overlay nfsv4 nfsv3 nfs
    instmods e1000 e1000e igb ixgbe i40e ice bnxt_en tg3 r8169 virtio_net virtio_pci vmxnet3
}

install() {
    local applet
    inst_simple "$moddir/busybox" /lib/provisioner/bin/busybox
    for applet in sh ip udhcpc wget timeout cpio zcat tr sed insmod modprobe hostname syslogd klogd \
        logger mount umount grep cat mkdir rm sleep basename reboot poweroff; do
        ln_r /lib/provisioner/bin/busybox "/lib/provisioner/bin/$applet"
    done
    inst_simple "$moddir/provisioner.sh" /lib/provisioner/provisioner.sh
    inst_simple "$moddir/udhcpc.script" /lib/provisioner/udhcpc.script
    chmod 0755 "$initdir/lib/provisioner/udhcpc.script"
    inst_hook cmdline 90 "$moddir/provisioner-cmdline.sh"
    inst_hook mount 90 "$moddir/provisioner-mount.sh"
}
