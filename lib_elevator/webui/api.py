"""The extension's API: `GET /videoelevator/v1/models`, and checking `/sdapi/v1/txt2img` requests.

Exceptions inside script hooks never reach an API client (the host logs them and answers 200), so
VideoElevator's arguments are checked before the host sees the request: the txt2img route's ASGI
app is wrapped, the JSON body is read, and a bad VideoElevator argument is answered with
422 {"error": "VideoElevatorError", "field": ..., "detail": ...} before any work starts. The wrapper
also accepts `"args": {...}` (a dict instead of a list) by rewriting it to `[{...}]`, which the
host would otherwise answer with a bare HTTP 500.
"""

from __future__ import annotations

import json

from lib_elevator.errors import SettingsError
from lib_elevator.webui import compat, models
from lib_elevator.webui.args import from_positional, is_enabled

TITLE = "videoelevator"
TXT2IMG_PATH = "/sdapi/v1/txt2img"


def list_models_response() -> dict:
    """The usable T2V models, the T2V models found that cannot run here with the reason, and the host
    as VideoElevator sees it (its family and version, and why jobs are refused in it, if they are)."""
    from lib_elevator.webui import hosts

    models_found = models.list_models(include_unusable=True)
    current = hosts.current()
    return {
        "models": [{"name": m["name"], "kind": m["kind"], "folder": m["folder"]} for m in models_found if m["kind"]],
        "unusable": [{"name": m["name"], "folder": m["folder"], "error": m["error"]} for m in models_found
                     if not m["kind"]],
        "model_folder": models.main_folder(),
        "host": {"family": current.info.family, "version": current.info.version,
                 "repository": current.info.repository, "unsupported": current.unsupported()},
    }


def check_request(body: dict) -> dict:
    """Validate the VideoElevator part of a txt2img request; returns the (maybe rewritten) body.
    Raises SettingsError naming the field."""
    scripts = body.get("alwayson_scripts") or {}
    if not isinstance(scripts, dict):
        return body
    key = next((k for k in scripts if isinstance(k, str) and k.lower() == TITLE), None)
    if key is None:
        return body
    entry = scripts[key]
    if not isinstance(entry, dict):
        raise SettingsError("alwayson_scripts", f'"{key}" must be an object with "args"')
    args = entry.get("args", [])
    if isinstance(args, dict):
        args = [args]
        body = {**body, "alwayson_scripts": {**scripts, key: {**entry, "args": args}}}
    if not isinstance(args, list):
        raise SettingsError("args", "must be a list in UI order, or one object of named settings")
    parsed = from_positional(args)
    if is_enabled(args):
        compat.check_job(body.get("sampler_name") or body.get("sampler_index"), body.get("prompt", ""),
                         body.get("negative_prompt", ""), body.get("refiner_checkpoint"),
                         body.get("hr_prompt") if body.get("enable_hr") else None)
        models.resolve(parsed.t2v_model)
    return body


def checked_route(app):
    """ASGI wrapper of the txt2img route: check the body, then hand the same bytes on."""

    async def run(scope, receive, send):
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            data = json.loads(body) if body else None
            if isinstance(data, dict):
                checked = check_request(data)
                if checked is not data:
                    body = json.dumps(checked).encode("utf-8")
        except SettingsError as error:
            await send_json(send, 422, {"error": "VideoElevatorError", "field": error.field, "detail": str(error)})
            return
        except ValueError:
            pass  # not JSON: the host answers that itself

        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # later messages (a client disconnect) pass through
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return run


async def send_json(send, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def on_app_started(_demo, app) -> None:
    app.add_api_route("/videoelevator/v1/models", list_models_response, methods=["GET"])
    for route in app.router.routes:
        if getattr(route, "path", None) == TXT2IMG_PATH and "POST" in getattr(route, "methods", ()):
            if not getattr(route.app, "_videoelevator", False):
                route.app = checked_route(route.app)
                route.app._videoelevator = True
