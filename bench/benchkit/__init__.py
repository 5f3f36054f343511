"""The benchmark's parts: wrk output, percentiles, the open-loop generator, the report."""
