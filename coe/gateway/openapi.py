"""Our OpenAPI document, made valid: inline request schemas keep `$defs` that `#/$defs/...`
refs cannot reach from the document root, so hoist them into components."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def _hoist(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    defs = schema.pop("$defs", {})
    components.update(defs)
    text = json.dumps(schema).replace('"#/$defs/', '"#/components/schemas/')
    out: dict[str, Any] = json.loads(text)
    return out


def install_openapi(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for operations in doc.get("paths", {}).values():
            for op in operations.values():
                content = op.get("requestBody", {}).get("content", {})
                for media in content.values():
                    if "schema" in media and "$defs" in media["schema"]:
                        media["schema"] = _hoist(media["schema"], components)
        for name in list(components):
            components[name] = json.loads(
                json.dumps(components[name]).replace('"#/$defs/', '"#/components/schemas/')
            )
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]
