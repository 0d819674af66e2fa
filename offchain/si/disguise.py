"""The relay's face: every answer a censor can provoke looks like a stock nginx 1.24.0 (DESIGN §7,
"everything else answers like an ordinary web server").

What nginx serving its default site does, and what this module copies:

* `GET`/`HEAD` of `/` or `/index.html`: the "Welcome to nginx!" page, with `Last-Modified`, `ETag` and
  `Accept-Ranges` as the static module sends them for that file;
* `GET`/`HEAD` of any other path, and `POST` to a path that is not a file: the 404 page;
* `POST` to `/` (a file): 405; any other method anywhere: 405;
* error pages byte for byte as nginx writes them (CRLF line ends, `<hr><center>nginx/1.24.0</center>`),
  `Content-Type: text/html`, and nginx's header order: Server, Date, Content-Type, Content-Length,
  [Last-Modified], Connection, [ETag, Accept-Ranges];
* nginx's own reason phrases in the status line ("405 Not Allowed", "504 Gateway Time-out");
* after a 400 or 500, nginx closes the connection; so does this module.

Requests aiohttp cannot even parse (garbage, a bad request line, oversized headers) never reach a
handler: `NginxAppRunner` answers those with nginx's 400 page instead of aiohttp's plain-text one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

__all__ = [
    "INDEX_HTML",
    "SERVER",
    "NginxAppRunner",
    "disguise_middleware",
    "error_page",
    "http_date",
    "index_page",
    "nginx_headers",
    "not_a_relay",
]

SERVER = "nginx/1.24.0"
_log = logging.getLogger(__name__)

INDEX_HTML = b"""<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href="http://nginx.org/">nginx.org</a>.<br/>
Commercial support is available at
<a href="http://nginx.com/">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
"""
"""nginx 1.24.0's html/index.html (615 bytes)."""

# The package's index.html is dated by the release (11 Apr 2023); the static module's ETag is
# "<mtime hex>-<size hex>".
_INDEX_MTIME = 1681177534
_INDEX_LAST_MODIFIED = formatdate(_INDEX_MTIME, usegmt=True)
_INDEX_ETAG = f'"{_INDEX_MTIME:x}-{len(INDEX_HTML):x}"'

# nginx's status lines (ngx_http_status_lines), where they differ from Python's phrases.
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Not Allowed",
    408: "Request Time-out",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}
# nginx drops keep-alive after these (ngx_http_special_response_handler; 408 ends the request).
_CLOSES = frozenset({400, 408, 413, 414, 500, 501})
_INDEX_PATHS = frozenset({"/", "/index.html"})


def _page(status: int) -> bytes:
    title = f"{status} {_REASONS[status]}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        f"<hr><center>{SERVER}</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


_PAGES = {status: _page(status) for status in _REASONS}

_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """Now as an HTTP date, computed at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def nginx_headers(content_type: str | None = "text/html", *, close: bool = False) -> CIMultiDict[str]:
    """Server, Date, [Content-Type], Connection — in nginx's order (aiohttp keeps the order it is given
    and fills Content-Length into the place nginx puts it only if told, so callers set it when known)."""
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Server"] = SERVER
    headers["Date"] = http_date()
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers["Connection"] = "close" if close else "keep-alive"
    return headers


def error_page(status: int, *, close: bool | None = None) -> web.Response:
    """nginx's error page for `status` (one of nginx's own); `close` defaults to what nginx does."""
    body = _PAGES[status]
    should_close = status in _CLOSES if close is None else close
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Server"] = SERVER
    headers["Date"] = http_date()
    headers["Content-Type"] = "text/html"
    headers["Content-Length"] = str(len(body))
    headers["Connection"] = "close" if should_close else "keep-alive"
    response = web.Response(status=status, reason=_REASONS[status], body=body, headers=headers)
    if should_close:
        response.force_close()
    return response


def index_page() -> web.Response:
    """The default site's index, as nginx's static module serves it."""
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Server"] = SERVER
    headers["Date"] = http_date()
    headers["Content-Type"] = "text/html"
    headers["Content-Length"] = str(len(INDEX_HTML))
    headers["Last-Modified"] = _INDEX_LAST_MODIFIED
    headers["Connection"] = "keep-alive"
    headers["ETag"] = _INDEX_ETAG
    headers["Accept-Ranges"] = "bytes"
    return web.Response(status=200, reason="OK", body=INDEX_HTML, headers=headers)


async def not_a_relay(request: web.Request) -> web.Response:
    """What nginx's default site answers to `request` (any request that is not the relay's)."""
    method = request.method
    if method in ("GET", "HEAD"):
        return index_page() if request.path in _INDEX_PATHS else error_page(404)
    if method == "POST":
        return error_page(405 if request.path in _INDEX_PATHS else 404)
    return error_page(405)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def disguise_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Whatever escapes a handler still answers as nginx would: aiohttp's own HTTP errors become the
    nginx page of the same status (or 404/500), a crash becomes nginx's 500 (and is logged)."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        return error_page(error.status if error.status in _PAGES else 404)
    except Exception:
        # Only the exception, never the request: the log must not learn more than the relay may keep.
        _log.exception("internal error")
        return error_page(500)


class _NginxRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # Called for requests the parser refused (and crashes outside any handler); aiohttp's version
        # answers text/plain with its own Server header. The log line keeps the reason only.
        if status >= 500:
            _log.error("error outside a handler: %s", type(exc).__name__ if exc else status)
        else:
            _log.debug("refused an unparsable request: %s", type(exc).__name__ if exc else status)
        response = error_page(status if status in _PAGES else 400, close=True)
        return response


class _NginxServer(web.Server):
    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        # The server builds its handlers itself; changing their class is the one way to replace
        # handle_error without copying aiohttp's constructor arguments.
        handler.__class__ = _NginxRequestHandler
        return handler


class NginxAppRunner(web.AppRunner):
    """An `AppRunner` whose answers to unparsable requests are nginx's 400 page too."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _NginxServer
        return server
