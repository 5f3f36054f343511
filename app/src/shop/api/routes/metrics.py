from fastapi import APIRouter, Response

from shop import metrics

router = APIRouter(tags=["metrics"])


# A plain def: in multiprocess mode this reads every worker's files from disk,
# so FastAPI runs it in the thread pool rather than on the event loop.
@router.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
