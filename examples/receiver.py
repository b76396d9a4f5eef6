"""A minimal subscriber: verifies reelhook's Standard Webhooks signature and prints each event.

.venv/bin/python examples/receiver.py --secret whsec_... [--port 9000]
"""

from __future__ import annotations

import argparse
import json

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def create_receiver(secret: str) -> Starlette:
    verifier = Webhook(secret)
    seen: set[str] = set()

    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            event = verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            return JSONResponse({"error": "bad signature"}, status_code=400)
        event_id = request.headers["webhook-id"]
        if event_id in seen:  # at-least-once delivery: deduplicate on webhook-id
            return Response(status_code=204)
        seen.add(event_id)
        job = event["data"]
        video = next((o.get("mirror_url") or o["url"] for o in job.get("outputs", [])), None)
        print(f"{event['type']:<15} {job.get('id')} status={job.get('status')} video={video}")
        print(json.dumps(event, indent=2)[:2000], flush=True)
        return Response(status_code=204)

    return Starlette(routes=[Route("/hook", receive, methods=["POST"])])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret", required=True, help="the subscription's whsec_ secret")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    uvicorn.run(create_receiver(args.secret), host="127.0.0.1", port=args.port, log_level="warning")
