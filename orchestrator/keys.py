"""Reading the SSH identity (``ssh.identity_file``, with ``ssh.passphrase_file``).

asyncssh reports a bad key as ``KeyImportError``/``KeyEncryptionError``, which are ValueErrors
and not ``asyncssh.Error``: left alone they escape as a traceback with the run stuck in
``preflight``. Here every way a key file can be wrong is one ``OrchestratorError`` line,
``ssh.identity_file: PATH: reason`` (exit 1: the config is valid, the file is not).
"""

from __future__ import annotations

from pathlib import Path

import asyncssh

from orchestrator.errors import OrchestratorError

IDENTITY_KEY = "ssh.identity_file"
PASSPHRASE_KEY = "ssh.passphrase_file"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a key file"
    if isinstance(exc, PermissionError):
        return "cannot read: permission denied"
    return f"cannot read: {exc.strerror or exc}"


def read_passphrase(passphrase_file: Path) -> bytes:
    """The first line of the file, without its line ending (a LoadCredential file)."""
    try:
        data = passphrase_file.read_bytes()
    except OSError as exc:
        raise OrchestratorError(f"{PASSPHRASE_KEY}: {passphrase_file}: {_os_reason(exc)}") from None
    passphrase = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if not passphrase:
        raise OrchestratorError(f"{PASSPHRASE_KEY}: {passphrase_file}: the file is empty")
    return passphrase


def _is_public_key(data: bytes) -> bool:
    try:
        asyncssh.import_public_key(data)
    except Exception:  # anything that does not parse is simply not a public key
        return False
    return True


def load_identity(identity_file: Path, passphrase_file: Path | None) -> asyncssh.SSHKey:
    """The private key, or OrchestratorError ``ssh.identity_file: PATH: reason``."""
    where = f"{IDENTITY_KEY}: {identity_file}"
    try:
        data = identity_file.read_bytes()
    except OSError as exc:
        raise OrchestratorError(f"{where}: {_os_reason(exc)}") from None
    if not data.strip():
        raise OrchestratorError(f"{where}: the file is empty")
    passphrase = read_passphrase(passphrase_file) if passphrase_file is not None else None
    try:
        return asyncssh.import_private_key(data, passphrase)
    except asyncssh.KeyEncryptionError as exc:
        if "bcrypt" in str(exc):
            reason = (
                "encrypted in the OpenSSH format, which needs the Python package bcrypt to "
                "decrypt; install it, or store the key unencrypted or as PKCS#8"
            )
        else:
            reason = f"wrong passphrase in {PASSPHRASE_KEY} ({passphrase_file})"
        raise OrchestratorError(f"{where}: {reason}") from None
    except asyncssh.KeyImportError as exc:
        message = str(exc)
        if _is_public_key(data):
            reason = "a public key, not a private key (name the file without .pub)"
        elif "Passphrase must be specified" in message:
            reason = f"the key is encrypted and no {PASSPHRASE_KEY} is set"
        elif passphrase is not None and ("decrypt" in message or "Incorrect" in message):
            reason = f"wrong passphrase in {PASSPHRASE_KEY} ({passphrase_file})"
        elif "PEM" in message or "truncated" in message.lower():
            reason = f"a damaged or truncated private key ({message})"
        else:
            reason = f"not a private key asyncssh can read ({message})"
        raise OrchestratorError(f"{where}: {reason}") from None
    except Exception as exc:  # a parser error asyncssh does not wrap: still one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OrchestratorError(f"{where}: not a valid private key ({reason})") from None
