"""provisioner: diskless node provisioning for HPC clusters.

The package follows the data path: inventory -> render -> artifacts -> servers -> nodestate.
A module only imports from its own stage or the stages before it.
"""

__version__ = "0.1.0"
