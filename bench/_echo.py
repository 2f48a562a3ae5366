"""A trivial FastAPI application: the HTTP baseline of bench/serve_load.py.

``POST /echo`` validates a small JSON body and answers a small JSON body, as the service's
message endpoint does, with nothing behind it.
"""

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel

app = FastAPI()


class Body(BaseModel):
    text: str


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/echo")
def echo(body: Body) -> Response:
    return Response('{"text":"' + body.text.replace('"', "") + '"}', media_type="application/json")
