"""Errors the API reports, each with a stable ``code``; rendered as ``{"error": {"code", "message"}}``.

::

    CloudError                 500 internal
     ├── BadQuery              400 bad_query
     ├── NotFound              404 not_found
     ├── ActionNotAllowed      422 action_not_allowed
     └── BrokerUnavailable     503 broker_unavailable
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class CloudError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadQuery(CloudError):
    status = 400
    code = "bad_query"


class NotFound(CloudError):
    status = 404
    code = "not_found"


class ActionNotAllowed(CloudError):
    status = 422
    code = "action_not_allowed"


class BrokerUnavailable(CloudError):
    status = 503
    code = "broker_unavailable"


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CloudError)
    async def _cloud(_: Request, exc: CloudError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse(error_body("invalid_request", problems), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_PARSE_ERROR:
            # A body that is not even text (e.g. not UTF-8): the same 422 as any other body that is not
            # the JSON asked for, instead of an undocumented 400.
            return JSONResponse(
                error_body("invalid_request", "body: not valid JSON (UTF-8 expected)"), status_code=422
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)


# What fastapi.routing raises (as a 400) when it cannot read a request body at all.
_FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"
_ERROR_REF = "#/components/schemas/ErrorOut"


def document_errors(app: FastAPI) -> None:
    """Make the OpenAPI document say what the error handlers really answer, for every operation:

    * 422 is ``ErrorOut`` (``invalid_request``), not FastAPI's default ``HTTPValidationError``;
    * an operation that declares a security scheme may answer 401 ``ErrorOut`` (the auth gate
      refuses a missing or bad token before any router runs, whatever the router documents).

    Call once all routers are included.
    """
    from cloud.schemas import ErrorDetail, ErrorOut

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorDetail, ErrorOut):
            components.setdefault(
                model.__name__, model.model_json_schema(ref_template="#/components/schemas/{model}")
            )
        error = {
            "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}},
        }
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = {"description": "Invalid request (invalid_request)", **error}
                if operation.get("security") and "401" not in responses:
                    responses["401"] = {"description": "No valid bearer token (unauthorized)", **error}
        # FastAPI's validation-error schemas, now referenced by nothing, would only mislead.
        if "/HTTPValidationError'" not in repr(schema["paths"]):
            components.pop("HTTPValidationError", None)
            if "/ValidationError'" not in repr(schema):
                components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
