"""Speed and size: interleaved timing, runtimes and backends, model statistics, op profiles, memory."""
