"""review: serve a report on 127.0.0.1 so "save" writes the rejects file in place.

    python -m pipeline.review NAME [--results results] [--rejects FILE] [--host 127.0.0.1]
        [--port 0] [--keep 20] [--access-log]
    make review NAME=holo

Prints ``http://127.0.0.1:<port>/<token>/report/index.html``; open it (the token is in
the URL, so bookmarks and other local users' guesses do not work). What it serves is
``<results>/<NAME>/`` and nothing else. Refused (403): any request without the token,
a Host other than 127.0.0.1/localhost/--host:<port> (DNS rebinding), a save whose Origin
or Sec-Fetch-Site says it came from another page. A save whose lines match no image of
the dataset is refused (409, the lines listed) unless the page confirms it. A save writes
the rejects file atomically (temp + rename); the previous file is copied to ``<file>.bak``
and kept, timestamped, in ``<file>.history/`` (the last --keep saves). Requests are not
logged unless --access-log. On a remote machine: serve there with a fixed --port and
tunnel it (``ssh -L 8765:127.0.0.1:8765 gpu-box``, the same port on both ends).

The rejects file is the one the report was built for (``report/review.json``), unless
``--rejects`` names another.
"""
from __future__ import annotations

import argparse
import hmac
import json
import mimetypes
import secrets
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.manifest import atomic_write_bytes, atomic_write_text, kept, read_manifest
from util.config import default_rejects
from pipeline.report import read_rejects_checked

MAX_SAVE_BYTES = 64 * 1024 * 1024  # a rejects file for millions of ids still fits


def rejects_path_of(results: Path, name: str, override: str | None) -> Path:
    if override:
        return Path(override).resolve()
    try:
        recorded = json.loads((results / "report" / "review.json").read_text(encoding="utf-8")).get("rejects")
    except (OSError, ValueError):
        recorded = ""
    return Path(recorded) if recorded else Path(default_rejects(name)).resolve()


KEEP_SAVES = 20  # previous rejects files kept in <file>.history/
# the page's optional data files before the targets that write them ran: no 404
EMPTY_DATA = {"report/figures.js": b"window.FACEPREP_FIGURES = [];\n",  # before `generate`
              "report/rounds.js": b"window.FACEPREP_ROUNDS = null;\n"}  # before `ranked_dataset`


def save_rejects(path: Path, text: str, keep: int = KEEP_SAVES) -> Path | None:
    """Write ``text`` to ``path`` atomically. The previous file (if any) goes to
    ``<path>.bak`` and, timestamped, to ``<path>.history/`` where the last ``keep`` stay."""
    backup = None
    if path.exists():
        previous = path.read_bytes()
        backup = path.with_name(path.name + ".bak")
        atomic_write_bytes(backup, previous)
        history = path.with_name(path.name + ".history")
        mtime_ns = path.stat().st_mtime_ns  # when that version was saved; names sort by it
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(mtime_ns / 1e9)) + f".{mtime_ns % 10**9:09d}"
        name, k = f"{stamp}.txt", 1
        while (history / name).exists():  # the same instant twice: both kept
            name, k = f"{stamp}-{k}.txt", k + 1
        atomic_write_bytes(history / name, previous)
        for old in sorted(history.glob("*.txt"))[:-keep or None]:
            old.unlink()
    atomic_write_text(path, text)
    return backup


def dataset_names(root: Path) -> set[str]:
    """The ids and sources of the dataset (what a rejects line may name); empty when the
    report has no export manifest beside it."""
    manifest = root / "export" / "manifest.tsv"
    if not manifest.is_file():
        return set()
    rows = list(kept(read_manifest(manifest)))
    return {r.id for r in rows} | {r.source for r in rows}


def unmatched_lines(text: str, names: set[str]) -> list[str]:
    """Reject lines (comments stripped) that name no dataset image or source."""
    lines = {s for line in text.splitlines() if (s := line.split("#", 1)[0].strip())}
    return sorted(lines - names) if names else []


def make_handler(root: Path, token: str, rejects: Path, port_box: list, host: str = "127.0.0.1",
                 access_log: bool = False, keep: int = KEEP_SAVES):
    hosts = {"127.0.0.1", "localhost", host}

    class Handler(BaseHTTPRequestHandler):
        server_version = "faceprep-review"

        def log_message(self, fmt, *args):  # off unless --access-log: a page load is ~45 GETs
            if access_log:
                sys.stderr.write("review: %s %s\n" % (self.address_string(), fmt % args))

        def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")  # the token stays in this tab
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, value) -> None:
            self._reply(status, json.dumps(value).encode("utf-8"))

        def _refuse(self, why: str) -> None:
            self._json(HTTPStatus.FORBIDDEN, {"error": why})

        def _route(self) -> str | None:
            """The path after /<token>/, or None (already refused)."""
            port = port_box[0]
            if self.headers.get("Host", "") not in {f"{h}:{port}" for h in hosts}:
                self._refuse("wrong Host")
                return None
            path = urlsplit(self.path).path
            head, _, rest = path.lstrip("/").partition("/")
            if not hmac.compare_digest(head.encode("utf-8", "replace"), token.encode()):
                self._refuse("missing or wrong token")
                return None
            return unquote(rest)

        def _same_origin(self) -> bool:
            port = port_box[0]
            origin = self.headers.get("Origin")
            if origin is not None and origin not in {f"http://{h}:{port}" for h in hosts}:
                return False
            site = self.headers.get("Sec-Fetch-Site")
            return site in (None, "same-origin", "none")

        def do_GET(self):
            rest = self._route()
            if rest is None:
                return
            if rest == "rejects":
                lines, problems = read_rejects_checked(str(rejects))
                self._json(HTTPStatus.OK, {"path": str(rejects), "lines": sorted(lines), "problems": problems})
                return
            target = (root / rest).resolve()
            if rest in EMPTY_DATA and not target.is_file():
                self._reply(HTTPStatus.OK, EMPTY_DATA[rest], "text/javascript; charset=utf-8")
                return
            if not target.is_relative_to(root) or not target.is_file():
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype.endswith("javascript"):
                ctype += "; charset=utf-8"
            self._reply(HTTPStatus.OK, target.read_bytes(), ctype)

        do_HEAD = do_GET

        def do_POST(self):
            rest = self._route()
            if rest is None:
                return
            if not self._same_origin():
                self._refuse("request from another origin")
                return
            if rest != "rejects":
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
                return
            if not 0 <= length <= MAX_SAVE_BYTES:
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "too large"})
                return
            try:
                text = self.rfile.read(length).decode("utf-8")
            except UnicodeDecodeError:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "not UTF-8 text"})
                return
            if "\0" in text:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "not text"})
                return
            unmatched = unmatched_lines(text, dataset_names(root))
            if unmatched and parse_qs(urlsplit(self.path).query).get("confirm") != ["1"]:
                listed = ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
                self._json(HTTPStatus.CONFLICT, {"error": f"{len(unmatched)} line(s) match no image of the "
                                                          f"dataset: {listed}", "unmatched": unmatched})
                return
            try:
                backup = save_rejects(rejects, text, keep)
            except OSError as e:
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"cannot write {rejects}: {e}"})
                return
            count = sum(1 for line in text.splitlines() if line.split("#", 1)[0].strip())
            print(f"review: saved {count} rejects to {rejects}" + (f" (previous: {backup})" if backup else ""),
                  flush=True)
            self._json(HTTPStatus.OK, {"path": str(rejects), "backup": str(backup) if backup else "",
                                       "count": count})

    return Handler


def serve(results: Path, name: str, rejects: str | None = None, port: int = 0, token: str | None = None,
          host: str = "127.0.0.1", access_log: bool = False, keep: int = KEEP_SAVES):
    """(server bound but not yet serving, its URL, the rejects file); call ``serve_forever()``."""
    root = (results / name).resolve()
    if not (root / "report" / "index.html").is_file():
        raise SystemExit(f"review: no report at {root / 'report' / 'index.html'}: "
                         f"run `snakemake dataset` (or ranked_dataset) for {name} first")
    token = token or secrets.token_urlsafe(24)
    port_box = [port]
    rejects_path = rejects_path_of(root, name, rejects)
    server = ThreadingHTTPServer((host, port), make_handler(root, token, rejects_path, port_box, host,
                                                            access_log, keep))
    port_box[0] = server.server_address[1]
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return server, f"http://{shown_host}:{port_box[0]}/{token}/report/index.html", rejects_path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the character name (results/<name>/report)")
    p.add_argument("--results", default="results", help="results_dir of the config")
    p.add_argument("--rejects", help="the rejects file to write (default: the one the report was built for)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only; "
                                                       "for a remote machine keep it and tunnel with ssh -L)")
    p.add_argument("--port", type=int, default=0, help="0: any free port (fix it to tunnel it)")
    p.add_argument("--keep", type=int, default=KEEP_SAVES, help="previous rejects files kept in <file>.history/")
    p.add_argument("--access-log", action="store_true", help="log every request on stderr")
    a = p.parse_args(argv)
    server, url, rejects = serve(Path(a.results), a.name, a.rejects, a.port, host=a.host,
                                 access_log=a.access_log, keep=a.keep)
    port = server.server_address[1]
    print(f"review: open {url}\nreview: save on the page writes {rejects} (previous saves kept in "
          f"{rejects.name}.history/); Ctrl-C stops\n"
          f"review: on a remote machine, tunnel first: ssh -L {port}:127.0.0.1:{port} <this machine>",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
