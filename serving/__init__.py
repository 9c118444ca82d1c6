"""Ray Serve apps: the HTTP/gRPC gateway, batching, feedback joins, publishing.

Serving imports only `core`; `cluster` wires it to the rest of a run.
"""
