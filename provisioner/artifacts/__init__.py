"""Artifacts: everything built into the state directory (overlay archives, boot configs,
images, initramfs, secrets), written atomically and found through `layout`."""
