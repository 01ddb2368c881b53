"""Pure decisions of the drain: batching, record isolation and the retry policy. No
Redis, HTTP or Celery here."""
