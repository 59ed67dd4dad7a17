"""The bucket stores: where buckets live, in this process or in Redis.

The adapters of the `BucketStore` port (ratelimit_service.store). The only modules that
talk to Redis are here: redis_store (standalone, Sentinel, Cluster), on redis_pipe (the
pipelined client) or redis_blocking (a connection per worker thread), all sending
gcra.lua through redis_script. memory is the in-process store.
"""
