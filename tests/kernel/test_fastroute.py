"""kernel.fastroute: a well-formed request is answered by the fast function, without FastAPI's
handler (the endpoint is not called); anything the fast function declines gets FastAPI's own
answer, error shape included; the OpenAPI document does not change."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel

from kernel.fastroute import fast_path_route


class Body(BaseModel):
    count: int


def make_app(fast_route: bool) -> tuple[FastAPI, list[str]]:
    calls: list[str] = []

    async def endpoint(name: str, body: Body) -> Any:
        calls.append("endpoint")
        return {"name": name, "count": body.count, "by": "fastapi"}

    async def fast(request: Request) -> Response | None:
        calls.append("fast")
        if request.path_params["name"] != "good":
            return None
        body = Body.model_validate_json(await request.body())
        return JSONResponse({"name": "good", "count": body.count, "by": "fast"})

    router = APIRouter(prefix="/v1")
    router.add_api_route("/things/{name}", endpoint, methods=["POST"],
                         route_class_override=fast_path_route(fast) if fast_route else None)
    app = FastAPI()
    app.include_router(router)
    return app, calls


def test_a_well_formed_request_is_answered_by_the_fast_function_alone() -> None:
    app, calls = make_app(fast_route=True)
    with TestClient(app) as client:
        resp = client.post("/v1/things/good", json={"count": 3})
    assert (resp.status_code, resp.json()) == (200, {"name": "good", "count": 3, "by": "fast"})
    assert calls == ["fast"]


def test_a_declined_request_gets_fastapis_answer_and_error_shape() -> None:
    app, calls = make_app(fast_route=True)
    plain, _ = make_app(fast_route=False)
    with TestClient(app) as client, TestClient(plain) as reference:
        ok = client.post("/v1/things/other", json={"count": 4})
        bad = client.post("/v1/things/other", json={"count": "many"})
        expected = reference.post("/v1/things/other", json={"count": "many"})
        broken = client.post("/v1/things/other", content=b"{",
                             headers={"content-type": "application/json"})
        expected_broken = reference.post("/v1/things/other", content=b"{",
                                         headers={"content-type": "application/json"})
    assert (ok.status_code, ok.json()) == (200, {"name": "other", "count": 4, "by": "fastapi"})
    assert calls == ["fast", "endpoint", "fast", "fast"]
    assert (bad.status_code, bad.json()) == (422, expected.json())
    assert bad.json()["detail"][0]["loc"] == ["body", "count"]
    assert (broken.status_code, broken.json()) == (422, expected_broken.json())


def test_the_openapi_document_is_the_plain_routes() -> None:
    app, _ = make_app(fast_route=True)
    plain, _ = make_app(fast_route=False)
    assert app.openapi() == plain.openapi()
