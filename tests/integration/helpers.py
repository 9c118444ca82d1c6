"""Run the real `evolve` CLI in a subprocess and wait on deadlines, never bare sleeps."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator

import httpx

REPO = Path(__file__).resolve().parents[2]


class CliProcess:
    """`evolve ...` in the background; its output collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", *args],
            cwd=REPO,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, needle: str, timeout_s: float) -> str:
        def seen() -> str | None:
            line = next((line for line in self.lines if needle in line), None)
            if line is None and self.proc.poll() is not None:
                raise AssertionError(f"evolve exited ({self.proc.returncode}) before printing {needle!r}:\n{self.output}")
            return line

        return wait_until(seen, timeout_s, f"output line {needle!r}")

    def wait(self, timeout_s: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"evolve did not exit within {timeout_s}s:\n{self.output}") from None
        self._reader.join(timeout=10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@contextmanager
def serving(proc: CliProcess, needle: str = "evolve: endpoints", timeout_s: float = 120) -> Iterator[str]:
    """A fixture's lifetime of a run: wait for `needle` (yields that line), then kill it and
    print the tail of its output (pytest shows it when a test of the module failed)."""
    try:
        yield proc.wait_for_line(needle, timeout_s=timeout_s)
    finally:
        proc.kill()
        print(proc.output[-6000:])


def wait_until(check: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.5) -> object:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except AssertionError:
            raise
        except Exception as exc:  # not up yet
            last_error = exc
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last_error})")


def http_get_json(url: str) -> dict:
    response = httpx.get(url, timeout=5)
    response.raise_for_status()
    return response.json()


def run_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s
    )


def tiny_bert_checkpoint(path: Path, texts: list[str]) -> Path:
    """A Hugging Face format directory (config, weights, a WordPiece tokenizer trained on `texts`),
    written with save_pretrained: what a user brings as a feedback loop's `model.pretrained_dir`, never from the hub."""
    import torch
    from transformers import BertConfig, BertModel

    from core.models.tokenizer import train_wordpiece

    tok = train_wordpiece(texts, 800)
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (cert.pem, key.pem in `directory`)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evolve-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
