"""Running compiled programs: the generation loop (chunked prefill, decode, sampling) and latency statistics."""
