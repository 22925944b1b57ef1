"""A FastAPI app that publishes after its write.

Run: TIDINGS_URL=http://127.0.0.1:8000 TIDINGS_API_KEY=… uvicorn fastapi_app:app
Then ``POST /applications/app123/approve``: every browser allowed to see
workspace ``acme`` receives ``applications.approved``.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, Optional

from fastapi import FastAPI, Header, HTTPException

from tidings import AsyncTidings

# The repository: where the write happens (a database in a real app).
applications: Dict[str, Dict[str, Any]] = {
    "app123": {"id": "app123", "workspace": "acme", "status": "submitted", "version": 1},
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One client (and connection pool) for the app's lifetime.
    async with AsyncTidings(os.environ["TIDINGS_URL"], os.environ["TIDINGS_API_KEY"], timeout=5, retries=3) as tidings:
        app.state.tidings = tidings
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/applications/{application_id}/approve")
async def approve(
    application_id: str,
    x_user: str = Header(default="u7"),
    x_tidings_client: Optional[str] = Header(default=None),
) -> Dict[str, Any]:
    row = applications.get(application_id)
    if row is None:
        raise HTTPException(404, "no such application")
    # The write first…
    row.update(status="approved", version=row["version"] + 1)
    # …then the event. The key makes retries (ours or a re-run of this handler)
    # publish it once; the tab that made the change (X-Tidings-Client) is left out.
    tidings: AsyncTidings = app.state.tidings
    await tidings.entity_event(
        row["workspace"],
        {"type": "applications", "id": application_id, "version": row["version"]},
        "approved",
        data={"status": row["status"]},
        actor=x_user,
        exclude_client=x_tidings_client,
        idempotency_key=f"applications:{application_id}:v{row['version']}",
    )
    return row
