"""Operations: health checks (doctor), dead letters and file ingestion."""
