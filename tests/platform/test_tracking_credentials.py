"""A tracking URI with a password (http://user:secret@host/): the password is never echoed, and it
reaches MLflow through MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, not through the URI."""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from labelmix.errors import UserError
from labelmix.mlflow_server import split_credentials
from labelmix.platform.mlflow_runs import check_reachable, use_credentials


def test_an_unreachable_server_is_named_without_its_password(closed_port):
    with pytest.raises(UserError) as info:
        check_reachable(f"http://user:secret@127.0.0.1:{closed_port}/", timeout_s=2)
    message = str(info.value)
    assert "secret" not in message
    assert message.startswith(f"tracking server http://user:***@127.0.0.1:{closed_port}/ is not reachable (")


def test_credentials_leave_the_uri_for_mlflows_environment_variables():
    environ: dict[str, str] = {}
    assert use_credentials("http://user:s%40cret@127.0.0.1:5000/", environ) == "http://127.0.0.1:5000/"
    assert environ == {"MLFLOW_TRACKING_USERNAME": "user", "MLFLOW_TRACKING_PASSWORD": "s@cret"}
    # a redacted URI (as labelmix records them) keeps the password already in the environment
    assert use_credentials("http://user:***@127.0.0.1:5000/", environ) == "http://127.0.0.1:5000/"
    assert environ["MLFLOW_TRACKING_PASSWORD"] == "s@cret"
    assert split_credentials("postgresql://a:b@db/mlflow") == ("postgresql://a:b@db/mlflow", None, None)
    assert use_credentials("sqlite:///x.db", environ) == "sqlite:///x.db"


@pytest.fixture
def auth_server():
    """GET /health answers 200 with Basic user:secret, else 401."""
    expected = "Basic " + base64.b64encode(b"user:secret").decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.headers.get("Authorization") == expected else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_the_health_check_sends_the_credentials(auth_server, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    check_reachable(f"http://user:secret@127.0.0.1:{auth_server}/")
    with pytest.raises(UserError) as info:
        check_reachable(f"http://user:wrong@127.0.0.1:{auth_server}/")
    assert str(info.value).startswith(
        f"tracking server http://user:***@127.0.0.1:{auth_server}/ is not reachable (GET /health answered 401)")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    check_reachable(f"http://127.0.0.1:{auth_server}/")


def test_submit_records_the_spec_with_the_password_redacted():
    from labelmix.platform.commands import _without_password
    from labelmix.platform.spec import parse_spec
    from tests.platform.test_spec import VALID

    spec = parse_spec({**VALID, "tracking": {"uri": "http://user:secret@127.0.0.1:5000/"}})
    recorded, uri = _without_password(spec)
    assert recorded.tracking.uri == "http://user:***@127.0.0.1:5000/"
    assert uri == "http://user:secret@127.0.0.1:5000/"  # given to run_study, which moves it to the environment
    assert "secret" not in recorded.model_dump_json()
