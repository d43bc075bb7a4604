"""Access control: an API key for writes (for everything beyond loopback), trusted host names, no writes
from other sites' pages, CORS only where configured; and the schema saying what each route answers."""

import pytest
from fastapi.testclient import TestClient
from helpers import LOCAL_URL, error, lookalike, ok, upload
from photos import encode

from lookalike.config import Settings
from lookalike.errors import LookalikeError
from lookalike.service import create_app

KEY = "a-key-of-sixteen-chars"


@pytest.fixture
def jpeg(photos) -> bytes:
    return encode(photos["coffee"])


def service(tmp_path, base_url: str = LOCAL_URL, **settings) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path, engines=["phash"], **settings)), base_url=base_url)


def test_with_a_key_writes_need_it_and_reads_on_loopback_do_not(tmp_path, jpeg):
    with service(tmp_path, api_key=KEY) as client:
        assert "X-API-Key" in error(upload(client, "/images", jpeg, image_id=1), 401)
        assert "wrong" in error(
            client.post("/images", files={"image": jpeg}, data={"image_id": "1"}, headers={"X-API-Key": KEY + "x"}), 401
        )
        error(client.delete("/images/1"), 401)
        error(client.post("/delete_phash_features", json={"image_id": 1}), 401)
        assert ok(client.get("/stats"))["images"] == 0
        response = client.post("/images", files={"image": jpeg}, data={"image_id": "1"}, headers={"X-API-Key": KEY})
        ok(response, 201)
        assert ok(upload(client, "/engines/phash/search", jpeg, k=1))[0]["image_id"] == 1  # a read: no key
        ok(client.delete("/images/1", headers={"X-API-Key": KEY}))


def test_beyond_loopback_every_route_but_health_needs_the_key(tmp_path, jpeg):
    with service(tmp_path, "http://gallery.lan", host="0.0.0.0", api_key=KEY) as client:
        error(upload(client, "/engines/phash/search", jpeg, k=1), 401)
        error(client.get("/stats"), 401)
        assert ok(client.get("/stats", headers={"X-API-Key": KEY}))["images"] == 0
        assert ok(client.get("/health")) == {"status": "ok"}


def test_the_service_refuses_to_listen_beyond_loopback_without_a_key(tmp_path):
    with pytest.raises(LookalikeError, match="LOOKALIKE_API_KEY"):
        create_app(Settings(data_dir=tmp_path, engines=["phash"], host="0.0.0.0"))
    create_app(Settings(data_dir=tmp_path, engines=["phash"], host="0.0.0.0", insecure=True))
    create_app(Settings(data_dir=tmp_path, engines=["phash"], host="::1"))
    refused = lookalike(tmp_path, "serve", "--host", "192.168.1.20", timeout=60)
    assert refused.returncode == 1 and "LOOKALIKE_API_KEY" in refused.stderr


def test_a_forged_host_is_refused(tmp_path):
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: that name is not served."""
    with service(tmp_path, "http://evil.example") as client:
        assert "host" in error(client.get("/stats"), 400)
    with service(tmp_path, "http://photos.home", trusted_hosts=["photos.home"]) as client:
        ok(client.get("/stats"))
    with service(tmp_path, "http://[::1]:8000") as client:
        ok(client.get("/stats"))


def test_writes_from_another_sites_page_are_refused(tmp_path, jpeg):
    with service(tmp_path) as client:
        evil = {"Origin": "http://evil.example"}
        response = client.post("/images", files={"image": jpeg}, data={"image_id": "1"}, headers=evil)
        assert "evil.example" in error(response, 403)
        error(client.delete("/images/1", headers=evil), 403)
        assert ok(client.get("/stats"))["images"] == 0
        own_page = {"Origin": "http://localhost"}
        ok(client.post("/images", files={"image": jpeg}, data={"image_id": "1"}, headers=own_page), 201)
        ok(client.post("/images", files={"image": jpeg}, data={"image_id": "2"}), 201)  # no Origin: not a browser


def test_cors_is_off_unless_origins_are_configured(tmp_path, jpeg):
    gallery = "https://gallery.example"
    with service(tmp_path) as client:
        assert "access-control-allow-origin" not in client.get("/stats", headers={"Origin": gallery}).headers
    with service(tmp_path, cors_origins=[gallery]) as client:
        assert client.get("/stats", headers={"Origin": gallery}).headers["access-control-allow-origin"] == gallery
        preflight = client.options(
            "/images",
            headers={
                "Origin": gallery,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key",
            },
        )
        assert preflight.status_code == 200 and "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
        ok(client.post("/images", files={"image": jpeg}, data={"image_id": "1"}, headers={"Origin": gallery}), 201)


def test_options_names_every_method_routed_at_a_path(client):
    response = client.options("/images")
    assert response.status_code == 204
    assert set(response.headers["allow"].split(", ")) == {"POST", "DELETE", "OPTIONS"}
    not_allowed = client.put("/images")
    assert not_allowed.status_code == 405 and "DELETE" in not_allowed.headers["allow"]


def test_the_schema_declares_each_routes_errors_and_the_api_key(client):
    schema = ok(client.get("/openapi.json"))
    operations = {(path, method): op for path, item in schema["paths"].items() for method, op in item.items()}
    assert operations[("/images", "post")]["responses"].keys() >= {
        "201",
        "400",
        "401",
        "403",
        "409",
        "413",
        "422",
        "507",
    }
    assert operations[("/images", "delete")]["responses"].keys() >= {"200", "401", "403", "404", "422"}
    assert operations[("/phash_get_similar_images_by_image_buffer", "post")]["responses"].keys() >= {
        "400",
        "413",
        "503",
    }
    assert operations[("/delete_phash_features", "post")]["responses"]["200"]["content"]["application/json"]
    assert "APIKeyHeader" in schema["components"]["securitySchemes"]
    for (path, method), operation in operations.items():
        if path != "/health":
            assert "422" in operation["responses"] or not operation.get("parameters"), (path, method)
