"""The bucket stores: where buckets live, in this process or in Redis.

The adapters of the `BucketStore` port (ratelimit_service.store). The only modules that
talk to Redis are here. One script path: gcra.lua is sent, loaded and reloaded after
NOSCRIPT by redis_script's `ScriptRunner`, over the one `Transport` interface that
redis_transports adapts each client to: redis_pipe (the pipelined client, a standalone
URL), redis_blocking (a connection per worker thread of the sync stack), redis-py
(Sentinel, URLs with options, Cluster). redis_store is the store of one server and the
factory; redis_cluster the Cluster store (per slot, per-node failures). memory is the
in-process store.
"""
