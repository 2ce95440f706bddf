"""Cluster secrets under state/secrets (0700 dirs, 0600 files), generated once, kept for good.

secrets/
  munge.key                   1024 random bytes, the cluster MUNGE key
  ssh_host_ca, .pub           ed25519 CA that signs every node's host keys, so one
                              `@cert-authority` line in ssh_known_hosts covers the cluster
  ssh/<node>/ssh_host_{ed25519,ecdsa,rsa}_key[.pub|-cert.pub]
  ssh/<node>/signed-for.<digest>  names the certificates were signed for (re-signed on change)
  ssh/<node>/valid.<signed>.<to>  when the certificates were signed and until when they are valid
                              (epoch seconds, valid from CERT_SKEW before signing): bounded, so a
                              stolen key stops working, and renewed once less than a quarter is left
  ssh_user_ca, .pub           ed25519 CA whose user certificates the nodes with the ssh-user-ca
                              overlay trust (TrustedUserCAKeys); made once a node uses it, or
                              by `secrets sign-user`
  ssh_revoked.krl             OpenSSH key revocation list of removed nodes' host keys; every
                              node's ssh client is told to refuse them (RevokedHostKeys)
  credentials/<node>          the node's report credential (64 hex digits): its overlay carries it,
                              its stage and facts reports present it
  bmc/nodes/<node>            the password of the node's BMC (`secrets set-bmc`)
  bmc/profiles/<profile>      the password of the BMCs of a profile's nodes (a rack's shared one)

Keys come from ssh-keygen, so they are real OpenSSH formats. Every file lands by rename, so a
key is either absent or complete; `stamp()` relies on that (a rename changes the directory).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write, private_dir
from ..errors import UserError
from ..inventory.model import Cluster, Inventory, Node
from ..paths import State
from .layout import secrets_dir

MUNGE_KEY = "munge.key"
MUNGE_KEY_BYTES = 1024
SSH_CA = "ssh_host_ca"
SSH_KEY_TYPES = ("ed25519", "ecdsa", "rsa")
SSH_KRL = "ssh_revoked.krl"
SSH_USER_CA = "ssh_user_ca"
USER_CA_OVERLAY = "ssh-user-ca"  # nodes with this overlay trust the user CA
USER_CERT_VALIDITY = "-5m:+1w"  # a user certificate's default validity (ssh-keygen -V)
CERT_VALIDITY = 52 * 7 * 86400  # seconds a host certificate is valid for
CERT_SKEW = 300  # certificates are valid from this many seconds before signing (clock skew)
CREDENTIALS = "credentials"
CREDENTIAL_BYTES = 32
BMC = "bmc"
BMC_PASSWORD_MAX = 256  # no BMC takes more; IPMI 2.0 stops at 20 bytes


class SecretMissing(UserError):
    pass


def _root(state: State) -> Path:
    return private_dir(secrets_dir(state))


def read_secret(state: State, relpath: str) -> bytes:
    return reader(state)(relpath)


def reader(state: State) -> Callable[[str], bytes]:
    """read_secret for many reads (a build reads ten per node): the folder is resolved once."""
    root = str(secrets_dir(state))

    def read(relpath: str) -> bytes:
        norm = os.path.normpath(relpath) if relpath else ""
        if not norm or norm.startswith(("/", "..")) or norm == ".":
            raise SecretMissing(f"secret path {relpath!r} is not inside {root}")
        try:
            with open(os.path.join(root, norm), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise SecretMissing(
                f"secret {relpath!r} does not exist (run `provisioner overlay build` "
                f"or `provisioner secrets regenerate`)"
            ) from None

    return read


def node_ssh_dir(node: str) -> str:
    return f"ssh/{node}"


# -- MUNGE ---------------------------------------------------------------------------------------


def munge_key(state: State) -> bytes:
    """The cluster MUNGE key, made on first use."""
    path = _root(state) / MUNGE_KEY
    if not path.exists():
        _create_munge_key(path)
    return path.read_bytes()


def _create_munge_key(path: Path) -> bool:
    """Link a complete key into place; if another process got there first, theirs stays."""
    fd, tmp = tempfile.mkstemp(prefix=".munge.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, os.urandom(MUNGE_KEY_BYTES))
        os.fsync(fd)
        os.close(fd)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


# -- SSH -----------------------------------------------------------------------------------------


def _keygen(args: list[str]) -> None:
    res = subprocess.run(
        ["ssh-keygen", "-q", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if res.returncode != 0:
        raise UserError(f"ssh-keygen {' '.join(args)} failed: {res.stderr.strip()}")


def _new_keypair(dest: Path, name: str, ktype: str, comment: str) -> None:
    """Generate in a private temp dir, then rename the public key and the private key last."""
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".keygen.") as tmp:
        key = Path(tmp) / name
        _keygen(["-t", ktype, "-N", "", "-C", comment, "-f", str(key)])
        os.chmod(key, 0o600)
        os.chmod(f"{key}.pub", 0o600)
        os.replace(f"{key}.pub", dest / f"{name}.pub")
        os.replace(key, dest / name)


def _ensure_ca(root: Path, cluster: Cluster, name: str = SSH_CA, what: str = "host") -> Path:
    ca = root / name
    if not ca.exists():
        _new_keypair(root, name, "ed25519", f"{cluster.name} {what} CA")
    return ca


def sign_user(
    state: State,
    cluster: Cluster,
    user: str,
    pubkey: str,
    principals: Iterable[str] = (),
    validity: str = USER_CERT_VALIDITY,
) -> str:
    """A certificate for `user`'s public key (its text), signed by the site's user CA (made if
    missing): the user logs into nodes that trust the CA as any of `principals` (default: the
    user). Serial: the signing time, so a revocation list can name it."""
    names = list(principals) or [user]
    bad = [n for n in [user, *names] if not _USER_NAME.match(n)]
    if bad:
        raise UserError(f"{bad[0]!r} is not a user name")
    root = _root(state)
    ca = _ensure_ca(root, cluster, SSH_USER_CA, "user")
    with tempfile.TemporaryDirectory(dir=root, prefix=".sign-user.") as tmp:
        key = Path(tmp) / "key.pub"
        key.write_text(pubkey.strip() + "\n")
        probe = subprocess.run(["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True, check=False)
        if probe.returncode != 0 or pubkey.lstrip().startswith("-----"):
            raise UserError("not an OpenSSH public key (give the .pub file)")
        serial = str(time.time_ns() // 1000)
        _keygen(["-s", str(ca), "-I", user, "-n", ",".join(names), "-V", validity, "-z", serial, str(key)])
        return (Path(tmp) / "key-cert.pub").read_text()


_USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def needs_host_keys(node: Node) -> bool:
    """Nodes with the ssh overlay get host keys (RSA keys take ssh-keygen a while to make)."""
    return "ssh" in node.overlays


def principals(cluster: Cluster, node: Node) -> str:
    names = [node.name, f"{node.name}.{cluster.domain}"]
    names += [str(i.ip) for i in node.interfaces if i.ip]
    return ",".join(names)


def signed_for(cluster: Cluster, node: Node) -> str:
    """Name of the file recording which principals the certificates carry. The name holds a
    digest of them, so one directory listing tells whether the node is complete and current:
    checking 10,000 nodes stays cheap."""
    return "signed-for." + hashlib.sha256(principals(cluster, node).encode()).hexdigest()[:16]


def _node_ssh_complete(root: Path, cluster: Cluster, node: Node) -> bool:
    try:
        present = set(os.listdir(f"{root}/{node_ssh_dir(node.name)}"))
    except FileNotFoundError:
        return False
    return present >= _SSH_FILES and signed_for(cluster, node) in present and not renewal_due(present)


_SSH_FILES = {f"ssh_host_{t}_key{s}" for t in SSH_KEY_TYPES for s in ("", ".pub", "-cert.pub")}


def renewal_due(names: Iterable[str], now: float | None = None) -> bool:
    """Whether the certificates whose validity marker is among these file names have less than
    a quarter of their validity left (or carry no marker: signed before validity was bounded)."""
    for name in names:
        if name.startswith("valid."):
            start, _, end = name[len("valid.") :].partition(".")
            if start.isdigit() and end.isdigit():
                return (time.time() if now is None else now) >= int(end) - (int(end) - int(start)) / 4
    return True


def _ensure_node_ssh(root: Path, ca: Path, cluster: Cluster, node: Node, validity: int = CERT_VALIDITY) -> bool:
    d = root / node_ssh_dir(node.name)
    changed = False
    for ktype in SSH_KEY_TYPES:
        name = f"ssh_host_{ktype}_key"
        if not (d / name).exists():
            _new_keypair(d, name, ktype, f"root@{node.name}")
            changed = True
    marker = signed_for(cluster, node)
    if (
        changed
        or not (d / marker).exists()
        or not all((d / f"ssh_host_{t}_key-cert.pub").exists() for t in SSH_KEY_TYPES)
        or renewal_due(os.listdir(d))
    ):
        now = int(time.time())
        _sign(d, ca, node.name, principals(cluster, node), f"-{CERT_SKEW}s:+{validity}s")
        for old in (*d.glob("signed-for.*"), *d.glob("valid.*")):
            old.unlink()
        atomic_write(d / f"valid.{now}.{now + validity}", "", mode=0o600)
        atomic_write(d / marker, principals(cluster, node), mode=0o600)
        changed = True
    return changed


def _sign(d: Path, ca: Path, identity: str, names: str, validity: str) -> None:
    with tempfile.TemporaryDirectory(dir=d, prefix=".sign.") as tmp:
        pubs = []
        for ktype in SSH_KEY_TYPES:
            pub = Path(tmp) / f"ssh_host_{ktype}_key.pub"
            shutil.copyfile(d / f"ssh_host_{ktype}_key.pub", pub)
            pubs.append(pub)
        _keygen(["-s", str(ca), "-I", identity, "-h", "-n", names, "-V", validity, *map(str, pubs)])
        for ktype in SSH_KEY_TYPES:
            cert = Path(tmp) / f"ssh_host_{ktype}_key-cert.pub"
            os.chmod(cert, 0o600)
            os.replace(cert, d / cert.name)


# -- report credentials -------------------------------------------------------------------------


def node_credential(node: str) -> str:
    """The path of the node's report credential under state/secrets."""
    return f"{CREDENTIALS}/{node}"


def ensure_credentials(state: State, nodes: Iterable[Node]) -> list[str]:
    """A report credential for each of these nodes that has none; returns the ones made.
    Callers hold the overlay build lock, so no two processes make one at once."""
    d = _root(state) / CREDENTIALS
    d.mkdir(mode=0o700, exist_ok=True)
    made = [n.name for n in nodes if not (d / n.name).exists()]
    for name in made:
        atomic_write(d / name, os.urandom(CREDENTIAL_BYTES).hex(), mode=0o600)
    return [node_credential(name) for name in made]


# -- BMC passwords ------------------------------------------------------------------------------


def bmc_secret(name: str, profile: bool = False) -> str:
    """The path under state/secrets of a node's BMC password, or of a profile's."""
    return f"{BMC}/{'profiles' if profile else 'nodes'}/{name}"


def set_bmc_password(state: State, names: Iterable[str], password: str, profile: bool = False) -> list[str]:
    """Store the BMC password of these nodes (or profiles), each file 0600 by rename."""
    if not password or len(password) > BMC_PASSWORD_MAX or any(c in password for c in "\r\n\0"):
        raise UserError(f"a BMC password is 1 to {BMC_PASSWORD_MAX} characters on one line")
    d = _root(state) / BMC / ("profiles" if profile else "nodes")
    private_dir(d.parent)
    private_dir(d)
    out = []
    for name in names:
        atomic_write(d / name, password, mode=0o600)
        out.append(bmc_secret(name, profile))
    return out


def bmc_password(state: State, node: Node) -> str | None:
    """The node's BMC password: its own, else that of its last profile that has one."""
    read = reader(state)
    for rel in (bmc_secret(node.name), *(bmc_secret(p, True) for p in reversed(node.profiles))):
        with contextlib.suppress(SecretMissing):
            return read(rel).decode()
    return None


# -- the whole set -------------------------------------------------------------------------------


def ensure_secrets(
    state: State,
    inventory: Inventory,
    nodes: Iterable[Node] | None = None,
    jobs: int | None = None,
    validity: int = CERT_VALIDITY,
) -> list[str]:
    """Create whatever is missing (MUNGE key, SSH CA, revocation list, each node's host keys and
    certificates) and renew certificates near their end; never touch the rest. Returns the names
    of what was created or re-signed."""
    root = _root(state)
    made: list[str] = []
    if not (root / MUNGE_KEY).exists() and _create_munge_key(root / MUNGE_KEY):
        made.append(MUNGE_KEY)
    ca_existed = (root / SSH_CA).exists()
    ca = _ensure_ca(root, inventory.cluster)
    if not ca_existed:
        made.append(SSH_CA)
    if not (root / SSH_KRL).exists():
        _update_krl(root, [])
        made.append(SSH_KRL)
    if not (root / SSH_USER_CA).exists() and any(USER_CA_OVERLAY in n.overlays for n in inventory.nodes):
        _ensure_ca(root, inventory.cluster, SSH_USER_CA, "user")
        made.append(SSH_USER_CA)
    todo = [
        n for n in (inventory.nodes if nodes is None else nodes) if not _node_ssh_complete(root, inventory.cluster, n)
    ]
    (root / "ssh").mkdir(mode=0o700, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        results = pool.map(lambda n: _ensure_node_ssh(root, ca, inventory.cluster, n, validity), todo)
        made += [node_ssh_dir(n.name) for n, changed in zip(todo, results, strict=True) if changed]
    return made


def _update_krl(root: Path, pubs: list[Path]) -> None:
    """Add these public keys to the revocation list (made empty if absent), by rename."""
    with tempfile.TemporaryDirectory(dir=root, prefix=".krl.") as tmp:
        krl = Path(tmp) / SSH_KRL
        if (root / SSH_KRL).exists():
            shutil.copyfile(root / SSH_KRL, krl)
            _keygen(["-k", "-u", "-f", str(krl), *map(str, pubs)])
        else:
            _keygen(["-k", "-f", str(krl), *map(str, pubs)])
        os.chmod(krl, 0o600)
        os.replace(krl, root / SSH_KRL)


def departed(state: State, inventory: Inventory) -> set[str]:
    """Nodes that have secrets here but are no longer in the inventory."""
    root = secrets_dir(state)
    names: set[str] = set()
    for sub in ("ssh", CREDENTIALS, bmc_secret("")):
        with contextlib.suppress(FileNotFoundError):
            names |= {n for n in os.listdir(root / sub) if not n.startswith(".")}
    return names - {n.name for n in inventory.nodes}


def forget(state: State, nodes: Iterable[str]) -> list[str]:
    """Revoke these nodes' host keys (the list every node's ssh client checks), then delete their
    keys, certificates and credential. Revoking comes first, so a crash in between leaves keys
    revoked and still on disk, and the next call finishes; returns the nodes forgotten."""
    root = _root(state)
    nodes = sorted(nodes)
    _revoke_keys(root, nodes)
    for name in nodes:
        _discard_keys(root, name)
        for rel in (node_credential(name), bmc_secret(name)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(root / rel)
    return nodes


def _revoke_keys(root: Path, nodes: Iterable[str]) -> None:
    """Add these nodes' host keys to the revocation list: a key revoked there revokes every
    certificate made for it too, so a copy of the old set is worthless before its expiry."""
    pubs = [p for n in nodes for p in sorted((root / node_ssh_dir(n)).glob("ssh_host_*_key.pub"))]
    if pubs:
        _update_krl(root, pubs)


def _discard_keys(root: Path, node: str) -> None:
    """Move the node's key folder aside in one rename, then delete it: never half a set."""
    d = root / node_ssh_dir(node)
    if d.exists():
        graveyard = Path(tempfile.mkdtemp(dir=root / "ssh", prefix=f".old.{node}."))
        os.replace(d, graveyard / "keys")
        shutil.rmtree(graveyard)


def regenerate_munge(state: State) -> None:
    atomic_write(_root(state) / MUNGE_KEY, os.urandom(MUNGE_KEY_BYTES), mode=0o600)


def regenerate_ssh(state: State, inventory: Inventory, nodes: Iterable[Node]) -> list[str]:
    """New host keys for these nodes. An admin regenerates keys that may have leaked, so the
    old set is revoked first (as for a removed node), then moved aside and a fresh one made."""
    root = _root(state)
    nodes = list(nodes)
    _revoke_keys(root, [n.name for n in nodes])
    for node in nodes:
        _discard_keys(root, node.name)
    return ensure_secrets(state, inventory, nodes)


def stamp(state: State, node: str) -> tuple[int | tuple[()], ...]:
    """Changes whenever a secret this node may receive changes: every file lands by rename, so
    the stat of the node's key directory and of the top-level files is enough (no reads); and
    when its certificates come near their end, so that the build renews them."""
    out: tuple[int | tuple[()], ...] = ()
    for rel in (node_ssh_dir(node), node_credential(node)):
        try:
            st = os.stat(f"{secrets_dir(state)}/{rel}")
            out += (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            out += ((),)
    with contextlib.suppress(FileNotFoundError):
        out += (renewal_due(os.listdir(f"{secrets_dir(state)}/{node_ssh_dir(node)}")),)
    return out


def shared_stamp(state: State) -> tuple[tuple[str, int, int, int], ...]:
    """The part of every node's stamp that is common: the top-level secret files."""
    root = secrets_dir(state)
    if not root.exists():
        return ()
    out = []
    with os.scandir(root) as it:
        for e in sorted(it, key=lambda e: e.name):
            if e.is_file():
                st = e.stat()
                out.append((e.name, st.st_mtime_ns, st.st_ino, st.st_size))
    return tuple(out)


# -- showing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretInfo:
    path: str
    size: int
    mode: str
    fingerprint: str

    def reveal(self, state: State) -> str:
        data = read_secret(state, self.path)
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            return base64.b64encode(data).decode() + "\n"


def list_secrets(state: State, node: str | None = None) -> list[SecretInfo]:
    root = secrets_dir(state)
    if not root.exists():
        return []
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in rel.split("/")):
            continue
        if node is not None and rel.startswith("ssh/") and not rel.startswith(f"ssh/{node}/"):
            continue
        st = path.stat()
        out.append(SecretInfo(rel, st.st_size, oct(st.st_mode & 0o777)[2:].zfill(4), _fingerprint(path)))
    return out


def _fingerprint(path: Path) -> str:
    if path.parent.parent.name == BMC:
        return "-"  # a digest of a short password would let it be guessed offline
    if path.name.endswith(".pub") and not path.name.endswith("-cert.pub"):
        res = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=False)
        if res.returncode == 0:
            return res.stdout.split()[1]
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
