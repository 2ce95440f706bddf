"""The shared test labs: network namespaces (net), a running `provisioner serve` (serve), PXE
boots of qemu guests against it (pxe), a master stand-in for direct-kernel boots (boot), a
tiny busybox root (busyroot), nfs-ganesha (ganesha), Slurm clusters in namespaces (slurm),
TFTP protocol helpers (tftp) and the site builder every test writes its cluster.yaml with (site).

pytest puts tests/ on sys.path (rootdir-relative "prepend" import of test modules without a
package), so tests import these as `labs.<module>`."""
