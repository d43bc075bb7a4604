"""Schemathesis over every operation of the OpenAPI schema: no server error, and every answer (status,
content type, body, headers) as the schema declares it, wrong or missing API keys refused, schema-invalid
requests refused. Some generated uploads are real photos, so successful adds, searches and deletes are
fuzzed too, not only refusals.

One check is left out: that every schema-valid request is accepted. A schema cannot say "bytes that
decode to an image" or "the threshold of this engine's measure", and JSON Schema counts 1.0 as an
integer where the service takes ids strictly (1.0 is not the id 1)."""

import itertools
import threading
import time

import httpx2 as httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from photos import encode, photos
from schemathesis.specs.openapi.checks import positive_data_acceptance

from lookalike.config import Settings
from lookalike.service import create_app

KEY = "fuzzing-key-0123456789"
EXAMPLES = 40  # per operation


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    """The service in uvicorn on a free loopback port (schemathesis's own ASGI client would start and stop
    the app's lifespan, which opens the library, at every call)."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz"),
        engines=["phash", "color", "tags"],
        max_upload_bytes=2**20,
        api_key=KEY,  # so that the schema declares the key on writes, and a wrong or missing one is tried
    )
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    yield schemathesis.openapi.from_url(f"{url}/openapi.json"), url
    server.should_exit = True
    thread.join()


REAL_PHOTOS = itertools.cycle([encode(photos()[name]) for name in ["coffee", "rocket", "chelsea"]])


def test_every_operation_answers_as_its_schema_says(api_schema):
    api_schema, url = api_schema
    # One hypothesis run per operation, driven here: schemathesis's pytest plugin does not load on pytest 9.
    calls, tested, failures = itertools.count(), [], {}
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            if isinstance(case.body, dict) and "image" in case.body and next(calls) % 2 == 0:
                case.body["image"] = next(REAL_PHOTOS)  # a real photo: the add or search goes through
            case.call_and_validate(headers={"X-API-Key": KEY}, excluded_checks=[positive_data_acceptance])

        try:
            fuzz()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failures, not only the first's
            failures[operation.label] = str(exc)[:2000]
        tested.append(operation.label)
    assert len(tested) == 40, tested  # every route, the original names of phash, color and tags among them
    assert not failures, "\n\n".join(f"{label}: {failure}" for label, failure in failures.items())
    # The real photos went in: adds (and the deletes and searches that found them) were fuzzed too.
    stats = httpx.get(f"{url}/stats").json()
    assert stats["images"] >= 1 and stats["engines"]["phash"]["indexed"] == stats["images"]
