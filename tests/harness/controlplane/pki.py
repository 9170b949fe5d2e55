"""A throwaway certificate authority for the local control plane, using the openssl CLI.

Why openssl: the project venv has no ``cryptography`` package and openssl is on every Debian
machine; ECDSA P-256 keys keep generation to milliseconds. Identities are x509 client
certificates (CN = user, O = groups), which is how kube-apiserver authenticates an admin in
``system:masters`` and any RBAC-limited identity the tests mint.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

_REQ_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
"""

VALID_DAYS = 30


class PkiError(RuntimeError):
    """openssl failed; the message carries its stderr."""


def _subject_value(value: str) -> str:
    """Escape a value for openssl's ``-subj /CN=.../O=...`` syntax."""
    if not value or "\n" in value:
        raise ValueError(f"invalid certificate subject value {value!r}")
    return value.replace("\\", "\\\\").replace("/", "\\/")


class CertificateAuthority:
    """A CA in a directory; issues serving and client certificates signed by it."""

    def __init__(self, directory: Path, openssl: str | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        found = openssl or shutil.which("openssl")
        if not found:
            raise PkiError("the openssl CLI is needed to make the control plane's certificates")
        self.openssl = found
        self.config = self.dir / "openssl-req.cnf"
        self.config.write_text(_REQ_CONFIG)
        self.cert = self.dir / "ca.crt"
        self.key = self.dir / "ca.key"
        if not self.cert.exists():
            self._genkey(self.key)
            self._run(
                "req", "-x509", "-new", "-config", str(self.config), "-extensions", "ca_ext",
                "-key", str(self.key), "-sha256", "-days", str(VALID_DAYS),
                "-subj", "/CN=lvs-operator test CA", "-out", str(self.cert),
            )

    def _run(self, *args: str) -> None:
        proc = subprocess.run(
            [self.openssl, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "OPENSSL_CONF": str(self.config)},
        )
        if proc.returncode != 0:
            raise PkiError(f"openssl {args[0]} failed: {proc.stderr.strip()}")

    def _genkey(self, path: Path) -> None:
        self._run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-out", str(path))
        path.chmod(0o600)

    def keypair(self, name: str) -> tuple[Path, Path]:
        """A bare key pair (private, public PEM), e.g. for service-account token signing."""
        key, pub = self.dir / f"{name}.key", self.dir / f"{name}.pub"
        self._genkey(key)
        self._run("pkey", "-in", str(key), "-pubout", "-out", str(pub))
        return key, pub

    def issue(
        self,
        name: str,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server_names: Sequence[str] = (),
    ) -> tuple[Path, Path]:
        """Issue a certificate; a server one when server_names (DNS names, IPs) are given.

        Returns (certificate, key) paths named after ``name`` in the CA directory.
        """
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ValueError(f"file name {name!r} must be [A-Za-z0-9._-]+")
        cert, key, csr = (self.dir / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
        ext_file = self.dir / f"{name}.ext.cnf"
        lines = [
            "[ext]",
            "basicConstraints = critical,CA:FALSE",
            "authorityKeyIdentifier = keyid",
        ]
        if server_names:
            sans = [
                f"IP:{n}" if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:]*", n) else f"DNS:{n}"
                for n in server_names
            ]
            lines += [
                "keyUsage = critical,digitalSignature,keyEncipherment",
                "extendedKeyUsage = serverAuth",
                "subjectAltName = " + ",".join(sans),
            ]
        else:
            lines += ["keyUsage = critical,digitalSignature", "extendedKeyUsage = clientAuth"]
        ext_file.write_text("\n".join(lines) + "\n")
        subject = "/CN=" + _subject_value(common_name)
        subject += "".join("/O=" + _subject_value(org) for org in organizations)
        self._genkey(key)
        self._run("req", "-new", "-config", str(self.config), "-key", str(key),
                  "-subj", subject, "-out", str(csr))
        self._run(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", hex(secrets.randbits(127) | 1), "-days", str(VALID_DAYS),
            "-sha256", "-extfile", str(ext_file), "-extensions", "ext", "-out", str(cert),
        )
        csr.unlink()
        return cert, key
