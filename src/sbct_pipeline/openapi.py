"""OpenAPI: the OpenAPI 3.1 document of every HTTP route, served at ``GET /openapi.json``.

Written by hand, next to the routes it describes, because the handlers parse their own input
(no schema library to generate from). Two tests keep it true: ``tests/test_openapi.py``
matches every registered aiohttp route (method and path) against ``paths``, and runs
schemathesis against the live ingress so that no generated request gets a 500 or a response
that breaks these schemas. A route added without its entry here fails the suite.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .httputil import json_response

VERSION = "0.2.0"

S = dict[str, Any]


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: S, required: list[str] | None = None, *, extra: bool = False) -> S:
    out: S = {"type": "object", "properties": props,
              "required": required if required is not None else list(props)}
    if not extra:
        out["additionalProperties"] = False
    return out


_STR: S = {"type": "string"}
_TIME: S = {"type": "string", "format": "date-time"}
_NAME: S = {"type": "string", "minLength": 1, "maxLength": 200}

_ERRORS = {
    400: "bad request: malformed JSON, a field or parameter that breaks the schema",
    401: "missing or wrong credentials",
    403: "a session token of another user",
    404: "no such resource for this caller",
    413: "body larger than SBCT_MAX_BODY_BYTES",
    415: "Content-Type is not application/json",
    429: "rate limited (Retry-After)",
    503: "broker or database unavailable, or queue over its limit (Retry-After)",
}


def _op(op_id: str, summary: str, ok: int, schema: S | None, *, errors: tuple[int, ...],
        security: str | None, params: list[S] | None = None, body: S | None = None,
        tag: str, ok_desc: str = "success", content_type: str = "application/json") -> S:
    responses: S = {}
    if schema is None:
        responses[str(ok)] = {"description": ok_desc}
    else:
        responses[str(ok)] = {"description": ok_desc, "content": {content_type:
                                                                  {"schema": schema}}}
    codes = {*errors, 503} if security else set(errors)
    if params or body is not None:
        codes.add(400)  # every parameter and body is checked, with an error naming it
    for code in sorted(codes):
        responses[str(code)] = {"description": _ERRORS[code],
                                "content": {"application/json": {"schema": _ref("Error")}}}
    op: S = {"operationId": op_id, "summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    if security == "admin":
        op["security"] = [{"admin": []}]
    elif security == "app":
        op["security"] = [{"apiToken": []}]
    elif security == "feed":
        op["security"] = [{"apiToken": []}, {"sessionToken": []}]
    else:
        op["security"] = []
    return op


def _path(name: str, schema: S | None = None, desc: str = "") -> S:
    return {"name": name, "in": "path", "required": True, "schema": schema or _NAME,
            "description": desc}


_APP = _path("app_id", desc="the app's ID (app_...)")
_USER = _path("user_id", desc="the recipient's user ID")
_KEY = _path("key", desc="the template key named by the webhook's key_values.template_key")
_TOKEN = _path("token_id", desc="the token's ID, as listed")
_TARGET = _path("target_id", {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
                "CleverTap's targetId (campaign or journey)")
_NID = _path("id", {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
             "the notification's id")
_LIMIT = {"name": "limit", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}
_BEFORE = {"name": "before", "in": "query", "required": False,
           "description": "cursor: the `next` of the previous page",
           "schema": {"type": "string", "pattern": "^[0-9]+$"}}
_LAST_ID = {"name": "last_event_id", "in": "query", "required": False,
            "description": "resume after this notification id (or header Last-Event-ID)",
            "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}}
_ACCESS = {"name": "access_token", "in": "query", "required": False,
           "description": "session token, for EventSource clients that cannot set headers",
           "schema": _STR}

_COMPONENTS: S = {
    "securitySchemes": {
        "admin": {"type": "http", "scheme": "bearer",
                  "description": "Authorization: Bearer $SBCT_ADMIN_TOKEN"},
        "apiToken": {"type": "apiKey", "in": "header", "name": "Api-token",
                     "description": "the app's API token (sbct_...)"},
        "sessionToken": {"type": "http", "scheme": "bearer",
                         "description": "a user's session token (sbcs_...), that user only"},
    },
    "schemas": {
        "Error": _obj({"error": _obj({"code": _STR, "message": _STR})}),
        "AppCreate": _obj({"name": _NAME}, extra=True),
        "AppCreated": _obj({"app_id": _STR, "name": _STR, "api_token": _STR,
                            "token_id": _STR}),
        "App": _obj({"app_id": _STR, "name": _STR, "created_at": _TIME}),
        "ApiToken": _obj({"token_id": _STR, "created_at": _TIME}),
        "ApiTokenList": _obj({"api_tokens": {"type": "array", "items": _ref("ApiToken")}}),
        "ApiTokenCreated": _obj({"app_id": _STR, "token_id": _STR, "api_token": _STR,
                                 "created_at": _TIME}),
        "IntegrationIn": _obj({
            "event_callback": {"type": "boolean"},
            "project_id": {"type": "string", "maxLength": 200},
            "passcode": {"type": "string", "maxLength": 200},
            "api_endpoint": {"type": "string", "maxLength": 500,
                             "description": "http(s) base URL (no query or fragment); "
                                            "/1/upload is appended"},
        }, required=["event_callback"], extra=True) | {
            "if": {"properties": {"event_callback": {"const": True}}},
            "then": {"required": ["project_id", "passcode", "api_endpoint"]},
        },
        "Integration": _obj({
            "event_callback": {"type": "boolean"}, "project_id": _STR,
            "passcode": {"type": "string", "description": "masked: only the last 4 shown"},
            "api_endpoint": _STR, "updated_at": {"type": ["string", "null"]},
        }),
        "TemplateIn": _obj({
            "name": {"type": "string", "maxLength": 200},
            "title": {"type": "string", "maxLength": 10_000},
            "body": {"type": "string", "maxLength": 10_000},
            "data": {"type": ["object", "null"]},
        }, required=["title", "body"], extra=True),
        "Template": _obj({
            "key": _STR, "name": _STR, "title": _STR, "body": _STR,
            "data": {"type": ["object", "null"]},
            "variables": {"type": "array", "items": _STR},
            "created_at": _TIME, "updated_at": _TIME,
        }),
        "TemplateList": _obj({"templates": {"type": "array", "items": _ref("Template")}}),
        "Notification": _obj({
            "id": {"type": "integer"}, "template_key": _STR, "title": _STR, "body": _STR,
            "data": {"type": ["object", "null"]}, "target_id": {"type": "integer"},
            "created_at": _TIME, "read_at": {"type": ["string", "null"]},
        }),
        "Feed": _obj({
            "notifications": {"type": "array", "items": _ref("Notification")},
            "next": {"type": ["string", "null"],
                     "description": "cursor for ?before=, null on the last page"},
            "unread_count": {"type": "integer", "minimum": 0},
        }),
        "MarkedRead": _obj({"marked_read": {"type": "integer", "minimum": 0}}),
        "SessionToken": _obj({"token": _STR, "user_id": _STR, "expires_at": _TIME,
                              "expires_in": {"type": "integer"}}),
        "Stats": _obj({
            "target_id": {"type": "integer"}, "sent": {"type": "integer"},
            "read": {"type": "integer"}, "failed": {"type": "integer"},
            "read_rate": {"type": "number", "minimum": 0, "maximum": 1},
        }),
        "Webhook": {
            "type": "object", "required": ["targetId", "profiles"],
            "description": "what a CleverTap webhook sends; unknown fields are ignored and "
                           "field names match in any casing",
            "properties": {
                "targetId": {"type": ["integer", "string"]},
                "is_test": {"type": "boolean"},
                "key_values": {"type": "object"},
                "profiles": {"type": ["array", "object"]},
            },
        },
        "WebhookAccepted": _obj({
            "request_id": _STR, "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "rejections": {"type": "array", "items": {"type": "object"}},
            "test": {"type": "boolean"},
        }, required=["request_id", "accepted", "rejected"]),
        "Health": _obj({"status": _STR, "problems": {"type": "object"}}, required=["status"],
                       extra=True),
        # Dashboard (routes in dashboard.py).
        "AppSummary": _obj({"app_id": _STR, "name": _STR, "created_at": _TIME,
                            "tokens": {"type": "integer", "minimum": 0},
                            "event_callback": {"type": ["boolean", "null"],
                                               "description": "null: no integration yet"}}),
        "AppList": _obj({"apps": {"type": "array", "items": _ref("AppSummary")}}),
        "Campaign": _obj({
            "target_id": {"type": "integer"}, "sent": {"type": "integer"},
            "read": {"type": "integer"}, "failed": {"type": "integer"},
            "read_rate": {"type": "number", "minimum": 0, "maximum": 1},
            "first_at": {"type": ["string", "null"]}, "last_at": {"type": ["string", "null"]},
        }),
        "CampaignList": _obj({"campaigns": {"type": "array", "items": _ref("Campaign")}}),
        "Series": _obj({
            "target_id": {"type": "integer"},
            "bucket": {"type": "string", "enum": ["minute", "hour", "day"]},
            "points": {"type": "array", "items": _obj({
                "t": {"type": "integer", "description": "bucket start, Unix seconds (UTC)"},
                "sent": {"type": "integer"}, "read": {"type": "integer"},
                "failed": {"type": "integer"}})},
        }),
    },
}


def _limit(hi: int, default: int) -> S:
    return {"name": "limit", "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": hi, "default": default}}


def _page(op_id: str, summary: str, content_types: tuple[str, ...], *,
          params: list[S] | None = None) -> S:
    """A dashboard page or file: no API credentials (the page asks for the admin token)."""
    op = _op(op_id, summary, 200, None, errors=(404,) if params else (), security=None,
             params=params, tag="dashboard")
    op["responses"]["200"]["content"] = {t: {"schema": {"type": "string"}}
                                         for t in content_types}
    op["responses"].pop("400", None)  # no parameter is parsed, only looked up
    return op

_BODY_ERR = (400, 401, 413, 415)

PATHS: S = {
    "/clevertap/notifications/single": {"post": _op(
        "webhookSingle", "Journey webhook (per-app rate limit)", 200, _ref("WebhookAccepted"),
        errors=(*_BODY_ERR, 429), security="app", body=_ref("Webhook"), tag="webhooks")},
    "/clevertap/notifications/multi": {"post": _op(
        "webhookMulti", "Campaign webhook (large profile lists)", 200,
        _ref("WebhookAccepted"), errors=_BODY_ERR, security="app", body=_ref("Webhook"),
        tag="webhooks")},
    "/v1/apps": {
        "post": _op("createApp", "Create an app; its first API token is shown once", 201,
                    _ref("AppCreated"), errors=_BODY_ERR, security="admin",
                    body=_ref("AppCreate"), tag="admin"),
        "get": _op("listApps", "Every app, newest first, with token count and event callback "
                   "(dashboard)", 200, _ref("AppList"), errors=(401,), security="admin",
                   params=[_limit(1000, 1000)], tag="dashboard"),
    },
    "/v1/apps/{app_id}": {"get": _op(
        "getApp", "Read an app", 200, _ref("App"), errors=(401, 404), security="admin",
        params=[_APP], tag="admin")},
    "/v1/apps/{app_id}/api_tokens": {
        "get": _op("listApiTokens", "List the app's API token ids (never secrets)", 200,
                   _ref("ApiTokenList"), errors=(401, 404), security="admin", params=[_APP],
                   tag="admin"),
        "post": _op("createApiToken", "Issue another API token (the others keep working)",
                    201, _ref("ApiTokenCreated"), errors=(401, 404), security="admin",
                    params=[_APP], tag="admin"),
    },
    "/v1/apps/{app_id}/api_tokens/{token_id}": {"delete": _op(
        "deleteApiToken", "Delete an API token; it stops working", 204, None,
        errors=(401, 404), security="admin", params=[_APP, _TOKEN], tag="admin",
        ok_desc="deleted")},
    "/v1/apps/{app_id}/integrations/clevertap": {
        "put": _op("putIntegration", "Set the CleverTap integration", 200, _ref("Integration"),
                   errors=(*_BODY_ERR, 404), security="admin", params=[_APP],
                   body=_ref("IntegrationIn"), tag="admin"),
        "get": _op("getIntegration", "Read the CleverTap integration (passcode masked)", 200,
                   _ref("Integration"), errors=(401, 404), security="admin", params=[_APP],
                   tag="admin"),
    },
    "/v1/templates": {"get": _op(
        "listTemplates", "All templates of the app (what a Notification Builder loads)", 200,
        _ref("TemplateList"), errors=(401,), security="app", tag="templates")},
    "/v1/templates/{key}": {
        "put": _op("putTemplate", "Create (201) or replace (200) a template", 200,
                   _ref("Template"), errors=_BODY_ERR, security="app", params=[_KEY],
                   body=_ref("TemplateIn"), tag="templates"),
        "get": _op("getTemplate", "Read a template", 200, _ref("Template"),
                   errors=(400, 401, 404), security="app", params=[_KEY], tag="templates"),
        "delete": _op("deleteTemplate", "Delete a template", 204, None,
                      errors=(400, 401, 404), security="app", params=[_KEY], tag="templates",
                      ok_desc="deleted"),
    },
    "/v1/users/{user_id}/session_tokens": {"post": _op(
        "createSessionToken", "A token for a client app to read this user's feed", 201,
        _ref("SessionToken"), errors=(400, 401), security="app", params=[_USER],
        tag="feed")},
    "/v1/users/{user_id}/notifications": {"get": _op(
        "listNotifications", "The user's feed, newest first", 200, _ref("Feed"),
        errors=(400, 401, 403), security="feed", params=[_USER, _LIMIT, _BEFORE],
        tag="feed")},
    "/v1/users/{user_id}/notifications/{id}/read": {"post": _op(
        "readNotification", "Mark one notification read (idempotent)", 200,
        _ref("Notification"), errors=(400, 401, 403, 404), security="feed",
        params=[_USER, _NID], tag="feed")},
    "/v1/users/{user_id}/notifications/read_all": {"post": _op(
        "readAllNotifications", "Mark every unread notification of the user read", 200,
        _ref("MarkedRead"), errors=(400, 401, 403), security="feed", params=[_USER],
        tag="feed")},
    "/v1/users/{user_id}/notifications/stream": {"get": _op(
        "streamNotifications",
        "Server-Sent Events: one `notification` event per delivery, data = a Notification",
        200, {"type": "string"}, errors=(400, 401, 403), security="feed",
        params=[_USER, _ACCESS, _LAST_ID], tag="feed", content_type="text/event-stream")},
    "/v1/campaigns/{target_id}/stats": {"get": _op(
        "campaignStats", "Sent, read, failed and read rate of a campaign or journey", 200,
        _ref("Stats"), errors=(400, 401), security="app", params=[_TARGET], tag="stats")},
    "/v1/campaigns": {"get": _op(
        "listCampaigns", "The app's campaigns with sent, read, failed and read rate, most "
        "recent activity first (dashboard)", 200, _ref("CampaignList"), errors=(400, 401),
        security="app", params=[_limit(500, 50)], tag="dashboard")},
    "/v1/campaigns/{target_id}/series": {"get": _op(
        "campaignSeries", "Sent, read and failed per UTC time bucket, gaps zero-filled, the "
        "newest `limit` buckets (dashboard chart)", 200, _ref("Series"), errors=(400, 401),
        security="app", params=[_TARGET, {
            "name": "bucket", "in": "query", "required": False,
            "schema": {"type": "string", "enum": ["minute", "hour", "day"],
                       "default": "minute"}}, _limit(1440, 1440)], tag="dashboard")},
    "/dashboard": {"get": _page("dashboardRedirect", "Redirects (308) to /dashboard/",
                                ("text/html",))},
    "/dashboard/": {"get": _page("dashboard", "The web dashboard (asks for the admin token)",
                                 ("text/html",))},
    "/dashboard/static/{path}": {"get": _page(
        "dashboardFile", "A file of the dashboard (scripts, styles, the vendored chart)",
        ("text/javascript", "text/css", "image/svg+xml", "text/plain", "text/markdown",
         "text/html"),
        params=[_path("path", {"type": "string"}, "file path under the dashboard")])},
    "/healthz": {"get": _op("healthz", "Process alive", 200, _ref("Health"), errors=(),
                            security=None, tag="operations")},
    "/readyz": {"get": _op("readyz", "Broker and database reachable", 200, _ref("Health"),
                           errors=(), security=None, tag="operations")},
    "/metrics": {"get": _op("metrics", "Prometheus metrics", 200, {"type": "string"},
                            errors=(), security=None, tag="operations",
                            content_type="text/plain")},
    "/openapi.json": {"get": _op("openapi", "This document", 200, {"type": "object"},
                                 errors=(), security=None, tag="operations")},
}
# readyz answers 503 with a Health body (not an Error) when a dependency is down.
PATHS["/readyz"]["get"]["responses"]["503"] = {
    "description": "a dependency is down", "content": {"application/json": {
        "schema": _ref("Health")}}}
PATHS["/dashboard"]["get"]["responses"]["308"] = {"description": "to /dashboard/"}
# putTemplate answers 201 when it created the template.
PATHS["/v1/templates/{key}"]["put"]["responses"]["201"] = {
    "description": "created", "content": {"application/json": {"schema": _ref("Template")}}}

DOCUMENT: S = {
    "openapi": "3.1.0",
    "info": {
        "title": "sbct-pipeline",
        "version": VERSION,
        "description": "CleverTap webhooks in, in-app feeds out, SENT/READ events back to "
                       "CleverTap. Errors are always {\"error\": {\"code\", \"message\"}}.",
    },
    "paths": PATHS,
    "components": _COMPONENTS,
}


async def openapi_view(request: web.Request) -> web.Response:
    return json_response(DOCUMENT)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_view)
