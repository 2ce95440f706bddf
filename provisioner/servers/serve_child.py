"""`python -m provisioner.servers.serve_child NAME FD`: one service of `provisioner serve` in a
process of its own (serve.child_main); serve starts it, never a user."""

import sys

from .serve import child_main

if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
