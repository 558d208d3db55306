"""``engine serve`` / ``engine relay`` --tls-cert/--tls-key: a pair that cannot serve is one
line and exit 2, before anything starts; a key others may read is refused."""

import subprocess
import sys

import pytest
import trustme


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert, other = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    other.private_key_pem.write_to_path(str(folder / "other-key.pem"))
    for key in ("key.pem", "other-key.pem"):
        (folder / key).chmod(0o600)
    return folder


def _engine(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *argv], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("command", ["serve", "relay"])
def test_a_key_readable_by_others_is_refused(pair, tmp_path, command):
    key = tmp_path / "key.pem"
    key.write_bytes((pair / "key.pem").read_bytes())
    key.chmod(0o644)
    where = ["--port", "0", "--db", str(tmp_path / "t.db")] if command == "serve" else \
        ["--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9"]
    result = _engine(command, *where, "--tls-cert", str(pair / "cert.pem"), "--tls-key", str(key))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"engine: error: setting tls_key: {key} is readable by others (mode 0o644): chmod 600 {key}"]


@pytest.mark.parametrize(("cert", "key", "says"), [
    ("cert.pem", "other-key.pem", "is not the key of the certificate"),
    ("missing.pem", "key.pem", "cannot read"),
    ("cert.pem", None, "--tls-cert needs --tls-key too"),
])
def test_a_pair_that_cannot_serve_is_one_line_and_exit_2(pair, tmp_path, cert, key, says):
    flags = ["--tls-cert", str(pair / cert)] + ([] if key is None else ["--tls-key", str(pair / key)])
    result = _engine("serve", "--port", "0", "--db", str(tmp_path / "t.db"), *flags)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("engine: error: setting tls_") and says in lines[0], lines
    assert not (tmp_path / "t.db").exists()


def test_a_client_that_never_finishes_its_tls_handshake_is_cut_off(run, db_path, pair):
    """Over HTTPS a silent connection is closed at ``header_timeout_s`` as a trickling head
    is (asyncio's own bound is 60 s), and others are served meanwhile."""
    import asyncio
    import ssl
    import time

    from engine.server import start_server

    async def scenario():
        runner, url = await start_server(port=0, db_path=db_path, header_timeout_s=0.5,
                                         tls_cert=pair / "cert.pem", tls_key=pair / "key.pem")
        try:
            port = int(url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # no ClientHello
            began = time.monotonic()
            closed = await asyncio.wait_for(reader.read(), 10)  # b"" once the server closes
            waited = time.monotonic() - began
            writer.close()
            trusted = ssl.create_default_context(cafile=str(pair / "ca.pem"))
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusted)
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return closed, waited, answer
        finally:
            await runner.cleanup()

    closed, waited, answer = run(scenario())
    assert closed == b"" and waited < 5, waited
    assert answer.startswith(b"HTTP/1.1 200")
