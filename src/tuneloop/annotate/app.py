"""`tuneloop annotate`: the annotation web tool, a FastAPI app over the project's queues and one static page.

```
GET  /                      the page (static/index.html); /static/<name> only the files of the package's folder
GET  /api/session           who you are (token → user, role), the task, its JSON Schema, the SOP as a tree
GET  /api/items?queue=…     a queue's items with filters (status, task_type, source, cluster, difficulty, sample_type)
GET  /api/items/{kind}/{id} one item: the form's sample, the model's answer, version, annotator, reviewer, times
POST /api/check             the label check of a form (the same check submit runs): problems by field
POST /api/preview           the prompt exactly as the model sees it (the one renderer, the model's tokenizer)
PUT  /api/items/{kind}/{id} annotator: save draft | submit | discard, with the version read (stale: 409 + newer)
POST /api/review            reviewer: accept | reject (with a comment) a submitted label
GET  /api/agreement         two annotators on shared samples: exact, per field, Cohen's kappa for enums
GET  /api/export?queue=…    reviewer: the queue's accepted labels as Alpaca JSONL (metadata and lineage carried)
POST /api/export/round      reviewer: into the next round (seed set file; the loop reads the relabel queue itself)
```
Every API call carries `Authorization: Bearer <token>`; the token decides the user and the role, and the server
checks the role of every write. Pages get a strict Content-Security-Policy (scripts from this server only, no inline
script), and the page builds all sample text with DOM text nodes.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from tuneloop.annotate.markdown import headings, sop_tree
from tuneloop.annotate.preview import Preview, PreviewError
from tuneloop.annotate.queues import FILTERS, META_FIELDS, QUEUES, STATES, Queues, labeled_sample
from tuneloop.project import Project, ProjectError
from tuneloop.records import SAMPLE_TYPES
from tuneloop.traces.queue import ACCEPTED, LabelRejected, QueueConflict, QueueError

STATIC_DIR = Path(__file__).resolve().parent / "static"
ROLES = ("annotator", "reviewer")
ACTIONS = {"draft": "draft", "submit": "submitted", "discard": "discarded"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"user {self.name!r}: role {self.role!r} is unknown; use annotator or reviewer.")


def static_files() -> dict[str, Path]:
    """The page's files by name: the only paths the app serves (nothing from a request reaches the file system)."""
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in CONTENT_TYPES}


def create_app(project: Project, store: Any, users: dict[str, User], tokenizer: Any = None) -> FastAPI:
    """The app over one project's store; `users` maps each secret token to its user."""
    if not users:
        raise ValueError("the annotation tool needs at least one user token.")
    queues = Queues(project, store)
    preview = Preview(project, tokenizer)
    files = static_files()
    app = FastAPI(title="tuneloop annotate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        return response

    def current_user(request: Request) -> User:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            for secret, user in users.items():
                if hmac.compare_digest(secret.encode(), token.strip().encode()):
                    return user
        raise HTTPException(401, "no valid token: open the URL `tuneloop annotate` printed (it carries your token)")

    def role(*allowed: str) -> Any:
        def check(user: User = Depends(current_user)) -> User:
            if user.role not in allowed:
                raise HTTPException(403, f"{user.name} is {user.role}; this needs the {' or '.join(allowed)} role")
            return user
        return check

    def item_or_404(kind: str, item_id: str) -> Any:
        try:
            return queues.get(kind, item_id)
        except QueueError as err:  # an unknown kind or id
            raise HTTPException(404, str(err)) from None

    @app.exception_handler(QueueConflict)
    async def conflict(request: Request, err: QueueConflict) -> JSONResponse:
        user = current_user(request)
        kind = "seed" if err.current.origin == "seed" else "relabel"
        return JSONResponse({"detail": str(err), "item": queues.detail(kind, err.current, user.role)}, 409)

    @app.exception_handler(LabelRejected)
    async def rejected(request: Request, err: LabelRejected) -> JSONResponse:
        problems = [vars(p) if not isinstance(p, str) else {"field": "output", "rule": "empty", "message": p, "fix": ""}
                    for p in err.problems]
        return JSONResponse({"detail": "the label breaks the label rules: fix them, or save a draft",
                             "problems": problems}, 422)

    @app.exception_handler(QueueError)
    async def bad_request(request: Request, err: QueueError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 400)

    # -- the page -------------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(files["index.html"], media_type=CONTENT_TYPES[".html"])

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)  # browsers ask for it; the page has no icon

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        path = files.get(name)
        if path is None:
            raise HTTPException(404, "no such file")
        return FileResponse(path, media_type=CONTENT_TYPES[path.suffix])

    # -- reading --------------------------------------------------------------------------------------------------
    @app.get("/api/session")
    def session(user: User = Depends(current_user)) -> dict[str, Any]:
        from tuneloop.annotate.sop import load_sop

        try:
            tree, sop_error = sop_tree(load_sop(project)), None
        except ProjectError as err:
            tree, sop_error = None, str(err)
        task = project.config.task
        return {"user": user.name, "role": user.role, "task": {"name": task.name, "system": task.system},
                "schema": project.schema(), "sop": tree, "sop_headings": headings(tree or []),
                "sop_error": sop_error, "queues": list(QUEUES), "states": STATES, "filters": list(FILTERS),
                "meta_fields": list(META_FIELDS), "sample_types": list(SAMPLE_TYPES),
                "difficulties": ["easy", "medium", "hard"]}

    @app.get("/api/items")
    def items(request: Request, queue: str = "seed", user: User = Depends(current_user)) -> dict[str, Any]:
        filters = {k: v for k, v in request.query_params.items() if k != "queue"}
        return queues.listing(queue, filters)

    @app.get("/api/items/{kind}/{item_id}")
    def item(kind: str, item_id: str, user: User = Depends(current_user)) -> dict[str, Any]:
        return queues.detail(kind, item_or_404(kind, item_id), user.role)

    @app.post("/api/check")
    def check(body: dict[str, Any], user: User = Depends(current_user)) -> dict[str, Any]:
        found = item_or_404(str(body.get("kind")), str(body.get("id")))
        return {"problems": queues.problems(str(body["kind"]), found, _form(body))}

    @app.post("/api/preview")
    def prompt_preview(body: dict[str, Any], user: User = Depends(current_user)) -> dict[str, Any]:
        from tuneloop.annotate.queues import label_from_form

        found = item_or_404(str(body.get("kind")), str(body.get("id")))
        sample = found.labeled(label_from_form(found, _form(body)))
        try:
            return {"prompt": preview.render(sample)}
        except PreviewError as err:
            raise HTTPException(503, str(err)) from None

    @app.get("/api/agreement")
    def agreement(user: User = Depends(current_user)) -> dict[str, Any]:
        return queues.agreement()

    # -- writing --------------------------------------------------------------------------------------------------
    @app.put("/api/items/{kind}/{item_id}")
    def save(kind: str, item_id: str, body: dict[str, Any], user: User = Depends(role("annotator"))) -> dict[str, Any]:
        action = body.get("action")
        if action not in ACTIONS:
            raise HTTPException(400, f"action {action!r}: use draft, submit or discard")
        item_or_404(kind, item_id)
        saved = queues.save(kind, item_id, _form(body), _version(body), user.name, ACTIONS[action])
        return queues.detail(kind, saved, user.role)

    @app.post("/api/review")
    def review(body: dict[str, Any], user: User = Depends(role("reviewer"))) -> dict[str, Any]:
        kind, item_id = str(body.get("kind")), str(body.get("id"))
        verdict = body.get("verdict")
        if verdict not in ("accept", "reject"):
            raise HTTPException(400, f"verdict {verdict!r}: use accept or reject")
        item_or_404(kind, item_id)
        saved = queues.review(kind, item_id, _version(body), user.name, verdict == "accept",
                              (body.get("comment") or "").strip() or None)
        return queues.detail(kind, saved, user.role)

    @app.get("/api/export")
    def export(queue: str = "relabel", user: User = Depends(role("reviewer"))) -> Response:
        from tuneloop.data.io.formats import sample_to_dict

        if queue not in ("seed", "relabel", "bad-cases"):
            raise HTTPException(400, f"queue {queue!r}: export seed, relabel or bad-cases")
        samples = [labeled_sample(kind, item) for kind, item in queues.members(queue) if item.status in ACCEPTED]
        # tuneloop's JSONL: the Alpaca keys with sample_type, expected, meta and lineage beside them (it reads back whole)
        text = "".join(json.dumps(sample_to_dict(s), ensure_ascii=False) + "\n" for s in samples)
        return Response(text, media_type="application/x-ndjson", headers={
            "Content-Disposition": f'attachment; filename="{project.config.task.name}-{queue}-alpaca.jsonl"'})

    @app.post("/api/export/round")
    def export_round(body: dict[str, Any], user: User = Depends(role("reviewer"))) -> dict[str, Any]:
        queue = body.get("queue")
        if queue == "seed":
            written = queues.write_seed_set()
            return {**written, "next": f"set data.sources to {written['path']} (it replaces the seed file it was "
                                       "read from) and run `tuneloop run`"}
        if queue in ("relabel", "bad-cases"):
            accepted = len(queues.tables["relabel"].accepted_samples())
            return {"accepted": accepted, "next": "`tuneloop loop` reads the relabel queue's accepted labels "
                                                  "(its traffic split stage): run it"}
        raise HTTPException(400, f"queue {queue!r}: export seed, relabel or bad-cases")

    return app


def _form(body: dict[str, Any]) -> dict[str, Any]:
    form = body.get("form")
    if not isinstance(form, dict):
        raise HTTPException(400, "the request needs a form: {output, expected, sample_type, instruction, input, meta}")
    return form


def _version(body: dict[str, Any]) -> int:
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise HTTPException(400, "the request needs the version of the item you read (an integer)")
    return version
