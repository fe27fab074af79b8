"""Shared fixtures: `inject` plans deterministic faults (see tests/faults.py)."""

import pytest

import faults


@pytest.fixture
def inject():
    """``inject([fault, ...])`` makes this process's executors run faulty block
    tasks; ``inject.clear()`` (and the end of the test) restores them."""
    undos = []

    def clear():
        while undos:
            undos.pop()()

    def plan(planned=(), faults_file=None):
        clear()
        undos.append(faults.install(planned, faults_file))

    plan.clear = clear
    yield plan
    clear()


@pytest.fixture(scope="session")
def _moto_server():
    """A real S3 API (moto's server) on 127.0.0.1, for the session; stopped at its end."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server._server.server_port}"
    finally:
        server.stop()


@pytest.fixture
def s3(_moto_server, monkeypatch):
    """An empty bucket on the moto server, its credentials in ``AWS_*`` (what
    child processes inherit); the fixture's value is ``s3://<bucket>``."""
    import uuid

    import s3fs

    env = {
        "AWS_ENDPOINT_URL": _moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"b{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket)
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()
