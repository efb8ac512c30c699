"""Times the dashboard's campaign queries on a large app (not a test; run by hand).

    .venv/bin/python -m tests.bench.dashboard_queries

Fills a scratch database ``sbct_dash_bench`` with 1,000,000 feed rows of one app in 100
campaigns (spread over 24 hours, a third read), times each query 5 times against a bare
``count(*)`` of the app's rows measured in the same run, then drops the database.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import asyncpg

from sbct_pipeline import storage
from sbct_pipeline.dashboard import _CAMPAIGNS_SQL, _SERIES_SQL
from sbct_pipeline.settings import Settings

ADMIN = os.environ.get("SBCT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
URL = ADMIN.rsplit("/", 1)[0] + "/sbct_dash_bench"
ROWS = 1_000_000


async def _median_ms(conn: asyncpg.Connection, sql: str, *args: Any) -> float:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        await conn.fetch(sql, *args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


async def main() -> None:
    await storage.migrate(Settings(database_url=URL))
    conn = await asyncpg.connect(URL)
    try:
        await conn.execute(
            "INSERT INTO notifications (app_id, user_id, request_id, template_key, target_id,"
            " event_name, title, body, created_at, read_at)"
            " SELECT 'app_x', 'u' || g, gen_random_uuid(), 't', g % 100, 'e', 'x', 'y',"
            " now() - (g % 1440) * interval '1 minute',"
            " CASE WHEN g % 3 = 0 THEN now() END FROM generate_series(1, $1) g", ROWS)
        await conn.execute("ANALYZE notifications")
        base = await _median_ms(conn, "SELECT count(*) FROM notifications WHERE app_id = $1",
                                "app_x")
        lst = await _median_ms(conn, _CAMPAIGNS_SQL, "app_x", 50)
        series = await _median_ms(conn, _SERIES_SQL, "app_x", 7, "minute", 1440)
        print(f"baseline count(*) of the app's {ROWS} rows: {base:.0f} ms")
        print(f"GET /v1/campaigns query: {lst:.0f} ms ({lst / base:.1f}x baseline)")
        print(f"GET /v1/campaigns/7/series?bucket=minute query ({ROWS // 100} rows): "
              f"{series:.0f} ms ({series / base:.2f}x baseline)")
    finally:
        await conn.close()
        admin = await asyncpg.connect(ADMIN)
        await admin.execute("DROP DATABASE IF EXISTS sbct_dash_bench WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
