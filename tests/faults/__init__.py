"""Fault-injection helpers for the reliability tests (issue 10).

- `s3_proxy.FaultProxy`: a threaded HTTP proxy on 127.0.0.1 in front of an S3 endpoint that answers
  a seeded share of requests with 500/503/SlowDown/429, stalls past the client's read timeout, or
  drops the connection; bounded in count and time, then it forwards everything untouched.
- `kill.Zygote`: a warm helper process that forks `dakd` CLI runs on request, so a test can
  `kill -9` a stage at a random point without paying Python/torch start-up for every run.
"""
