"""The shared test labs: network namespaces (net), a running `provisioner serve` (serve), PXE
boots against it (pxe), a master stand-in for direct kernel boots (boot), qemu guests run to
a console marker (guest), a tiny busybox root (busyroot), nfs-ganesha (ganesha), Slurm
clusters in namespaces (slurm), TFTP protocol helpers (tftp) and the builder every test
writes its cluster.yaml with (site).

pytest puts tests/ on sys.path (its "prepend" import of test modules outside a package), so
tests import these as `labs.<module>`."""
