"""`tuneloop annotate`: the annotation web tool over the project's seed set, relabel queue and eval bad cases."""

from __future__ import annotations

import secrets
import socket

import typer

from tuneloop.cli.apps import app
from tuneloop.cli.common import UserError, console, find_project, friendly_errors
from tuneloop.cli.serve import _is_loopback

DEFAULT_USERS = ["annotator:annotator", "reviewer:reviewer"]


def parse_users(users: list[str], tokens: list[str]) -> dict[str, object]:
    """token → User for each NAME:ROLE, with the token given in the same position of --token, else a new one."""
    from tuneloop.annotate.app import ROLES, User

    if len(tokens) > len(users):
        raise UserError(f"{len(tokens)} --token for {len(users)} --user: give one token per user, in the same order.")
    found: dict[str, object] = {}
    for index, spec in enumerate(users):
        name, _, role = spec.partition(":")
        if not name or role not in ROLES:
            raise UserError(f"--user {spec!r}: write NAME:ROLE with ROLE annotator or reviewer (e.g. ann:annotator).")
        token = tokens[index] if index < len(tokens) else secrets.token_urlsafe(24)
        if len(token) < 16:
            raise UserError(f"--token for {name}: use at least 16 characters (a guessable token is no protection).")
        if token in found:
            raise UserError(f"--token for {name}: the same token twice; every user needs their own.")
        found[token] = User(name, role)
    return found


@app.command("annotate")
@friendly_errors
def annotate(
    port: int = typer.Option(8765, "--port", help="Port of the page (0: any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface; loopback unless annotators reach it over a "
                             "network you trust (the page is plain HTTP)."),
    user: list[str] = typer.Option(None, "--user", help="NAME:ROLE (annotator | reviewer), repeatable "
                                   "(default: annotator:annotator and reviewer:reviewer)."),
    token: list[str] = typer.Option(None, "--token", envvar="TUNELOOP_ANNOTATE_TOKENS",
                                    help="The token of each --user, in order (default: a new random one each)."),
) -> None:
    """Serve the annotation tool: queues, a form from the task's schema, live prompt preview, rule checks, review.

    Each user gets a URL carrying their token; their role (annotator or reviewer) is enforced by the server.

    Example: tuneloop annotate --port 8765 --user ann:annotator --user rev:reviewer
    """
    import uvicorn

    from tuneloop.annotate.app import create_app
    from tuneloop.annotate.queues import Queues
    from tuneloop.traces.store import TraceStore

    project = find_project()
    users = parse_users(list(user or DEFAULT_USERS), list(token or []))
    store = TraceStore(project.traces_db)
    added, notes = Queues(project, store).add_seed_set()
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"seed set: {added} new samples queued (traces → {project.traces_db})", highlight=False)
    application = create_app(project, store, users)
    # the socket is bound first, so the URLs printed carry the real port (--port 0 picks a free one)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror}); pick another port.") from None
    bound = sock.getsockname()[1]
    if not _is_loopback(host):
        console.print(f"note: {host} is reachable from other machines over plain HTTP; the tokens below travel in "
                      "clear: use it only on a network you trust (or behind a TLS proxy)", highlight=False)
    shown = f"[{host}]" if ":" in host else host
    for secret, person in users.items():
        console.print(f"{person.name} ({person.role}): http://{shown}:{bound}/#token={secret}", highlight=False,
                      soft_wrap=True)
    uvicorn.Server(uvicorn.Config(application, log_level="warning")).run(sockets=[sock])
